"""Deploy: the promoted model version as the KServe InferenceService (predictor + feedback transformer)."""

from kfp import dsl

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def deploy(
    model_uri: str,
    feedback_uri: str,
    routing_threshold: float,
    canary_percent: int,
    namespace: str,
    serve_image: str,
    data_uri: str,
    work_uri: str,
    run_id: str,
    local: bool,
) -> str:
    """Create or patch the InferenceService and wait until it is ready; locally, only write its YAML.

    Args:
        model_uri: The version to serve (`models:/cutout/<version>`: a new version rolls out a new revision).
        feedback_uri: Where the transformer routes pairs (retraining store, review queue).
        routing_threshold: Scores below it go to review; negative: the version's calibrated threshold.
        canary_percent: Traffic share for the new revision (1-99); otherwise all of it.
        namespace, serve_image: Where it runs and the serving image (empty: `cutout-serve:<version>`).
        data_uri, work_uri, run_id: Locate the run's folder, where the InferenceService's YAML is written.
        local: Do not touch a cluster.

    Returns:
        The service's URL on the cluster; empty locally.
    """
    from cutout.pipeline import steps
    from cutout.platform.names import given_threshold

    deployment = steps.Deployment(
        namespace, serve_image, canary_percent if 0 < canary_percent < 100 else None
    )
    out = steps.run_folder(data_uri, work_uri, run_id, "deploy")
    done = steps.deploy(
        model_uri, feedback_uri, given_threshold(routing_threshold), out, deployment, on_cluster=not local
    )
    print(f"deployment: {done}")
    return done.get("url") or ""
