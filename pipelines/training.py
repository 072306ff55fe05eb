"""The training pipeline: merge feedback → clean → cluster → augment → train → evaluate → register and
promote → deploy, inside an exit handler that records the run's outcome.

`cutout pipeline compile -o cutout-training.yaml` writes it (the compiled YAML is a build output);
`cutout pipeline run --local` runs it here with `kfp.local`; `cutout pipeline submit` / `schedule` send it
to a KFP server. Parameters are the pipeline function's arguments below.

- Caching is off for every step: each run reads prefixes that change between runs (the raw data, the
  retraining store, the registry's champion) and writes its data into its own run folder outside KFP's
  artifact store, so a cached step would hand on a pointer to another run's data.
- The steps that talk to the cluster (the training MPIJob, the InferenceService) retry with a backoff: a
  retried training stage resumes from its last checkpoint.
- The MLflow and S3 settings come from the Secrets `cutout-mlflow` and `cutout-s3` (see
  `cutout.platform.pods`); locally from this process's environment.
"""

from kfp import dsl, kubernetes

from components.augment import augment
from components.clean import clean
from components.cluster import cluster
from components.deploy import deploy
from components.evaluate import evaluate
from components.merge import merge_feedback
from components.outcome import record_outcome
from components.register_and_promote import register_and_promote
from components.train import train
from cutout.pipeline.steps import TrainSettings
from cutout.platform.names import CALIBRATED

PIPELINE_NAME = "cutout-training"
MLFLOW_SECRET, S3_SECRET = "cutout-mlflow", "cutout-s3"
# Defaults: the EKS on-demand preset of `cutout.platform.mpijob.NODE_POOLS` (GKE and Karpenter: see there).
ON_DEMAND_GPU_NODES = {"eks.amazonaws.com/capacityType": "ON_DEMAND"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
TRAINING = (
    TrainSettings()
)  # the training parameters' defaults: `cutout train`'s (TrainConfig) and the stages'


def _on_platform(task: dsl.PipelineTask, retries: int = 0) -> dsl.PipelineTask:
    """Caching off, the Secrets' settings as environment, and retries for steps that talk to the cluster."""
    task.set_caching_options(False)
    kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    kubernetes.use_secret_as_env(
        task, S3_SECRET, {key: key for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    )
    # Optional: MinIO needs the endpoint, AWS does not.
    kubernetes.use_secret_as_env(
        task, S3_SECRET, {"AWS_ENDPOINT_URL_S3": "AWS_ENDPOINT_URL_S3"}, optional=True
    )
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    return task


@dsl.pipeline(name=PIPELINE_NAME, description="Retrain U²-Net on raw data plus feedback; promote; deploy.")
def cutout_training_pipeline(
    data_uri: str,
    feedback_uri: str = "",
    work_uri: str = "",
    model_variant: str = TRAINING.model,
    clean_size: int = 320,
    clusters: int = 6,
    val_fraction: float = 0.1,
    cluster_overrides: str = "",
    augment_copies: int = 2,
    epochs: int = TRAINING.epochs,
    batch_size: int = TRAINING.batch_size,
    lr: float = TRAINING.lr,
    warmup_epochs: float = TRAINING.warmup_epochs,
    input_size: int = TRAINING.input_size,
    crop: int = TRAINING.crop,
    low_res_epochs: int = TRAINING.low_res_epochs,
    low_res_size: int = TRAINING.low_res_size,
    low_res_lr: float = TRAINING.low_res_lr,
    pretrained: str = TRAINING.pretrained,
    workers: int = TRAINING.workers,
    gpus_per_worker: int = 1,
    gpu_node_selector: dict = ON_DEMAND_GPU_NODES,
    gpu_tolerations: list = GPU_TOLERATIONS,
    namespace: str = "cutout",
    train_image: str = "",
    train_timeout_s: float = 86_400.0,
    routing_threshold: float = CALIBRATED,
    promotion_margin: float = 0.0,
    real_holdout_uri: str = "",
    extra_holdout_uris: str = "",
    deploy_model: bool = True,
    canary_percent: int = 0,
    serve_image: str = "",
    local: bool = False,
):
    """Retrain on the raw data plus the retraining store; register; promote if better; deploy if promoted.

    Args:
        data_uri: Raw pairs (s3:// or folder): images/<id>.<ext>, masks/<id>.<ext>, optional manifest.jsonl.
        feedback_uri: The serving feedback root whose retrain/auto and retrain/corrected pairs join the data.
        work_uri: Where each run's datasets and reports go (`<work_uri>/<run id>/…`); empty: `runs/` beside
            the raw data.
        model_variant: u2net or u2netp.
        clean_size, clusters, val_fraction, cluster_overrides, augment_copies: The data steps' settings.
        epochs, batch_size, lr, warmup_epochs, input_size, crop: Training (batch and rate per worker).
        low_res_epochs, low_res_size, low_res_lr: A first stage at a low resolution; 0 epochs: none.
        pretrained: Weights the first stage fine-tunes: a built-in model (`u2netp`, the default: the
            official pretrained U²-NetP), a checkpoint (path or s3://) or a registry URI;
            `models:/cutout@champion` fine-tunes the current champion (scheduled retraining) and starts
            from the built-in `u2netp`, with a loud note, while there is none. Empty: from scratch.
        workers: Horovod workers (MPIJob worker pods; local processes with `local`).
        gpus_per_worker: GPUs per worker pod (one rank each).
        gpu_node_selector: Labels of the on-demand GPU node pool (spot nodes kill long training).
        gpu_tolerations: Taints of that pool the training pods tolerate (Kubernetes toleration objects).
        namespace: Where the MPIJob and the InferenceService run.
        train_image, serve_image: Training and serving images; empty: cutout-train, cutout-serve:<version>.
        train_timeout_s: How long one training stage may take.
        routing_threshold: The transformer's threshold; negative: the version's calibrated one.
        promotion_margin: How much the lower end of the gain's 95% interval (candidate minus champion,
            mean IoU over the same photos) must exceed on some domain for a promotion.
        real_holdout_uri: Real photos the gate compares the candidate and the champion on, beside the
            `val` split: empty, the 200 street-fashion photos cutout ships; `none`, no such holdout.
        extra_holdout_uris: More datasets the gate compares on (comma-separated), each scored per
            `domain` of its records: e.g. photos on a new backdrop that the retraining should learn.
        deploy_model: Deploy a promoted model.
        canary_percent: Send this share (1-99) of traffic to the new revision at first; 0: all of it.
        local: Train with local Horovod workers and do not deploy (write the InferenceService's YAML).
    """
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    outcome = _on_platform(record_outcome(data_uri=data_uri, work_uri=work_uri, run_id=run_id))
    with dsl.ExitHandler(outcome, name="retrain"):
        merged = _on_platform(
            merge_feedback(data_uri=data_uri, feedback_uri=feedback_uri, work_uri=work_uri, run_id=run_id)
        )
        cleaned = _on_platform(clean(data=merged.outputs["merged"], size=clean_size))
        clustered = _on_platform(
            cluster(
                data=cleaned.outputs["cleaned"],
                k=clusters,
                val_fraction=val_fraction,
                overrides=cluster_overrides,
            )
        )
        augmented = _on_platform(augment(data=clustered.outputs["clustered"], copies=augment_copies))
        trained = _on_platform(
            train(
                data=augmented.outputs["augmented"],
                run_id=run_id,
                model_variant=model_variant,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                warmup_epochs=warmup_epochs,
                input_size=input_size,
                crop=crop,
                low_res_epochs=low_res_epochs,
                low_res_size=low_res_size,
                low_res_lr=low_res_lr,
                pretrained=pretrained,
                workers=workers,
                gpus_per_worker=gpus_per_worker,
                node_selector=gpu_node_selector,
                tolerations=gpu_tolerations,
                namespace=namespace,
                train_image=train_image,
                timeout_s=train_timeout_s,
                local=local,
            ),
            retries=2,
        )
        evaluated = _on_platform(
            evaluate(model=trained.outputs["model"], holdout=clustered.outputs["clustered"])
        )
        registered = _on_platform(
            register_and_promote(
                model=trained.outputs["model"],
                metrics=evaluated.outputs["metrics"],
                holdout=clustered.outputs["clustered"],
                promotion_margin=promotion_margin,
                real_holdout_uri=real_holdout_uri,
                extra_holdout_uris=extra_holdout_uris,
            )
        )
        # Two conditions, so the KFP UI shows why a run did not deploy. `== True`: a KFP condition.
        requested = dsl.If(deploy_model == True, name="deploy-requested")  # noqa: E712
        with requested, dsl.If(registered.outputs["promoted"] == True, name="promoted"):  # noqa: E712
            _on_platform(
                deploy(
                    model_uri=registered.outputs["model_uri"],
                    feedback_uri=feedback_uri,
                    routing_threshold=routing_threshold,
                    canary_percent=canary_percent,
                    namespace=namespace,
                    serve_image=serve_image,
                    data_uri=data_uri,
                    work_uri=work_uri,
                    run_id=run_id,
                    local=local,
                ),
                retries=2,
            )
