"""Train: U²-Net with Horovod, as a Training Operator MPIJob on GPU nodes, or `horovodrun` here (`local`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def train(
    data: Input[Dataset],
    run_id: str,
    model_variant: str,
    epochs: int,
    batch_size: int,
    lr: float,
    warmup_epochs: float,
    input_size: int,
    crop: int,
    low_res_epochs: int,
    low_res_size: int,
    low_res_lr: float,
    pretrained: str,
    workers: int,
    gpus_per_worker: int,
    node_selector: dict,
    tolerations: list,
    namespace: str,
    train_image: str,
    timeout_s: float,
    local: bool,
    model: Output[Model],
):
    """Train (in two stages when `low_res_epochs` > 0: low resolution, then a fine-tune at `input_size`).

    Args:
        data: The augmented dataset; its `val` split is validated on every epoch.
        run_id: This run's id (the MPIJobs' names derive from it).
        model_variant, epochs, batch_size, lr, warmup_epochs, input_size, crop: As for `cutout train`
            (the batch size is per worker).
        low_res_epochs, low_res_size, low_res_lr: The first stage; 0 epochs for one stage only.
        pretrained: Weights the first stage fine-tunes (checkpoint, s3:// or `models:/cutout@champion`, which
            trains from scratch, with a note, while the registry has no champion); empty: from scratch.
        workers, gpus_per_worker: Horovod workers (pods on the cluster, processes locally) and their GPUs.
        node_selector, tolerations: The on-demand GPU node pool the MPIJob's pods are pinned to.
        namespace, train_image, timeout_s: Where the MPIJob runs, its image (empty: default), its time limit.
        local: Train here under `horovodrun -np <workers>` instead of on the cluster.
        model: The trained model (metadata: MLflow `run_id`, `model_uri`, `checkpoint`, the stages').
    """
    from cutout.pipeline import steps

    src = data.metadata["uri"]
    settings = steps.TrainSettings(
        model=model_variant, epochs=epochs, batch_size=batch_size, lr=lr, input_size=input_size, crop=crop,
        warmup_epochs=warmup_epochs, low_res_epochs=low_res_epochs, low_res_size=low_res_size,
        low_res_lr=low_res_lr, workers=workers, pretrained=pretrained,
    )  # fmt: skip
    cluster = None
    if not local:
        cluster = steps.ClusterTraining(steps.job_name(run_id), namespace, train_image, gpus_per_worker,
                                        node_selector, tolerations, timeout_s)  # fmt: skip
    info = steps.train(src, steps.sibling(src, steps.TRAINING_FOLDER), settings, cluster)
    model.metadata.update(steps.pointer(model.path, info))
    print(f"trained: MLflow run {info['run_id']}, model {info['model_uri']}")
