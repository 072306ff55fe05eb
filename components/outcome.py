"""The exit handler's step: record how the run ended, whichever way it ended."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def record_outcome(status: PipelineTaskFinalStatus, data_uri: str, work_uri: str, run_id: str):
    """Write `outcome.json` (state, failed task, error) into the run's folder and print it.

    Runs after every other step, also when one failed: scheduled runs leave a record that monitoring and
    people can read without the KFP UI.

    Args:
        status: The final status of the pipeline's steps, filled in by KFP.
        data_uri, work_uri, run_id: Locate the run's folder.
    """
    from cutout.pipeline import steps

    folder = steps.run_folder(data_uri, work_uri, run_id)
    steps.record_outcome(folder, status.state, status.pipeline_task_name, status.error_code,
                         status.error_message, job=status.pipeline_job_resource_name)  # fmt: skip
