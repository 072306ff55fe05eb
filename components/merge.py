"""Merge: raw pairs plus the retraining store's auto-accepted and corrected pairs, as a new dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def merge_feedback(data_uri: str, feedback_uri: str, work_uri: str, run_id: str, merged: Output[Dataset]):
    """Bring `<feedback_uri>/retrain/{corrected,auto}` into a new dataset beside the raw data.

    Pairs are deduplicated by the photo's sha256 (raw first, then corrected, then auto); every input is kept
    or rejected with a reason. See `cutout.pipeline.merge`.

    Args:
        data_uri: Raw dataset (folder or s3://): images/, masks/, optional manifest.jsonl.
        feedback_uri: The serving feedback root; empty for raw data alone.
        work_uri: Where runs keep their data; empty: `runs/` beside the raw data.
        run_id: This run's id (its folder's name).
        merged: The merged dataset (metadata: `uri`, pairs read and kept per source, rejects).
    """
    from dataclasses import asdict

    from cutout.pipeline import steps
    from cutout.pipeline.merge import merge_feedback as merge

    out = steps.run_folder(data_uri, work_uri, run_id, "merged")
    summary = merge(data_uri, feedback_uri or None, out)
    merged.metadata.update(steps.pointer(merged.path, {"uri": out, **asdict(summary)}))
    print(f"merged {summary.written} pairs into {out}: kept {summary.kept}, rejected {summary.rejected}")
