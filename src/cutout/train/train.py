"""Train U²-Net on a prepared dataset: alone, under `horovodrun -np N`, or as an MPIJob's command.

The shape of torchvision's reference scripts: `get_dataset`, `get_loaders`, `get_optimizer`,
`get_scheduler`, `main(args)`, `get_args_parser()`. The loop itself is in `engine.py`; every Horovod
call is in `distributed.py`; only rank 0 logs and saves.

Learning-rate schedule: linear warm-up (the rate is scaled by the number of workers, and a large rate
at step 0 can wreck batch-norm statistics), then cosine decay to zero. Cosine rather than
reduce-on-plateau: it needs no noisy validation signal, and it is a pure function of the step, so a
resumed job follows exactly the schedule the interrupted one would have.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from cutout.data.dataset import PairDataset
from cutout.data.transforms import eval_transform, train_transform
from cutout.model import build_model, load_weights
from cutout.model.builtin import is_builtin
from cutout.platform.names import REGISTRY_SCHEME
from cutout.train import batchnorm, distributed
from cutout.train import checkpoint as ckpt
from cutout.train.config import TrainConfig
from cutout.train.config import parser as config_parser
from cutout.train.engine import evaluate, train_one_epoch
from cutout.train.tracking import TrainingTracker

REESTIMATE_BATCHES = 25  # batches whose statistics re-estimated batch norms start from


@dataclass
class Training:
    """What the epoch loop works on."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_loader: DataLoader
    val_loaders: dict[str, DataLoader]  # by domain ("real", "synthetic", ...): metrics per domain
    device: torch.device
    autocast_dtype: torch.dtype | None


def get_dataset(args: argparse.Namespace, train: bool) -> Dataset:
    """The train or validation pairs: the `split` field of `--data`, or `--val-data` for validation.

    Training also takes every pair of each `--extra-data` dataset (real photos beside the synthetic
    catalogue, say): one epoch goes over all of them.
    """
    if train:
        transform = train_transform(args.input_size, args.crop)
        main = PairDataset(args.data, transform, split=None if args.val_data else "train")
        extra = [PairDataset(uri, transform) for uri in args.extra_data]
        return ConcatDataset([main, *extra]) if extra else main
    transform = eval_transform(args.input_size)
    return (
        PairDataset(args.val_data, transform) if args.val_data else PairDataset(args.data, transform, "val")
    )


def get_validation_sets(args: argparse.Namespace) -> dict[str, PairDataset]:
    """The validation pairs grouped by their records' `domain`, `--extra-val-data` included.

    Real photos and the synthetic catalogue are scored apart: a model can gain on one and lose on the
    other, and the average of both would hide it.
    """
    sets: list[PairDataset] = [get_dataset(args, train=False)]
    sets += [PairDataset(uri, eval_transform(args.input_size)) for uri in args.extra_val_data]
    by_domain: dict[str, list[PairDataset]] = {}
    for dataset in sets:
        for domain in dataset.domains():
            by_domain.setdefault(domain, []).append(dataset.only_domain(domain))
    return {domain: ConcatDataset(parts) for domain, parts in sorted(by_domain.items())}


def get_loaders(args: argparse.Namespace, workers: distributed.Workers, device: torch.device):
    """Sharded loaders, validation by domain: DataLoader workers and pinned memory keep a GPU fed."""
    train_set = get_dataset(args, train=True)
    sampler = distributed.train_sampler(train_set, workers, args.seed)
    options = {"num_workers": args.loader_workers, "pin_memory": device.type == "cuda",
               "persistent_workers": args.loader_workers > 0}  # fmt: skip
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True, **options
    )
    val_loaders = {
        domain: DataLoader(distributed.validation_shard(val_set, workers), batch_size=args.batch_size,
                           **options)
        for domain, val_set in get_validation_sets(args).items()
    }  # fmt: skip
    return train_loader, val_loaders


def get_optimizer(model: torch.nn.Module, args: argparse.Namespace, workers: distributed.Workers):
    """Adam at `lr` × workers (the effective batch grows with them), averaged across workers."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr * workers.size)
    return distributed.distributed_optimizer(optimizer, model)


def get_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int):
    """Linear warm-up over `--warmup-epochs`, then cosine decay, stepped every batch."""
    total = max(args.epochs * steps_per_epoch, 1)
    warmup = min(round(args.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pin_pretrained(
    uri: str | None, tracking_uri: str | None = None, announce: bool = True, variant: str = "u2netp"
) -> str | None:
    """`--pretrained` with a registry alias pinned to the version that holds it now.

    `models:/cutout@champion` becomes `models:/cutout/<version>`, so the run's `pretrained` parameter says
    which weights it started from. An alias that names no version yet (a first scheduled run on an empty
    registry) falls back to the variant's built-in pretrained weights (`u2netp`), or to training from
    scratch where there are none (`u2net`), and says so loudly where `announce` (rank 0). Other values
    are returned as they are.

    Args:
        uri: What `--pretrained` says: a built-in name, a file, an `s3://` URI, `models:/NAME@ALIAS` or
            `models:/NAME/VERSION`.
        tracking_uri: `--tracking-uri`; by default the MLflow settings of the environment.
        announce: Print the note when falling back.
        variant: The model being trained (`--model`).
    """
    if not uri or not uri.startswith(REGISTRY_SCHEME):
        return uri or None
    from cutout.platform.registry import pin_alias

    _use_tracking_uri(tracking_uri)
    pinned = pin_alias(uri)
    if pinned is None:
        fallback = variant if is_builtin(variant) else None
        if announce:
            name, alias = uri.removeprefix(REGISTRY_SCHEME).split("@", 1)
            instead = f"from the built-in pretrained {fallback!r}" if fallback else "FROM SCRATCH"
            rule = "!" * 100
            print(f"{rule}\n!! --pretrained {uri}: the registry has no {name!r} version with the alias "
                  f"{alias!r} yet.\n!! Training {instead} instead (expected on the first run against an "
                  f"empty registry).\n{rule}", flush=True)  # fmt: skip
        return fallback
    return pinned


def load_pretrained(uri: str, variant: str, tracking_uri: str | None = None) -> torch.nn.Module:
    """Weights to fine-tune from: official `.pth`, our checkpoint (local or `s3://`), or a registered model.

    A `models:/…` URI is fetched from the MLflow registry (its checkpoint) by `load_weights`; every
    Horovod worker does this on its own, with the environment's MLflow settings (in the cluster: the
    `cutout-mlflow` Secret).

    Raises:
        ValueError: The registry has no such model version, or it holds no checkpoint.
    """
    if not uri.startswith(REGISTRY_SCHEME):
        return load_weights(uri, variant=variant)
    from mlflow.exceptions import MlflowException

    from cutout.platform.tracking import current_tracking_uri

    _use_tracking_uri(tracking_uri)
    try:
        return load_weights(uri, variant=variant)
    except MlflowException as error:
        raise ValueError(f"--pretrained {uri}: not found in the MLflow registry at "
                         f"{current_tracking_uri()}: {error.message}") from None  # fmt: skip


def _use_tracking_uri(tracking_uri: str | None) -> None:
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)


def get_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """A new model, or official/our/registered weights to fine-tune from (`--pretrained`)."""
    if args.pretrained:
        model = load_pretrained(args.pretrained, args.model, args.tracking_uri)
    else:
        model = build_model(args.model)
    # Weights stay contiguous: Horovod allreduces gradients in place and refuses channels_last tensors.
    # The inputs are channels_last (engine.py), which is enough for convolutions to pick NHWC kernels.
    return model.to(device)


def prepare_batch_norms(model: torch.nn.Module, mode: str, loader: DataLoader, device: torch.device) -> str:
    """Freeze or re-estimate the batch norms as `--batch-norm` asks (see `batchnorm`); the mode used."""
    mode = batchnorm.resolve_mode(model, mode)
    if mode == "frozen":
        batchnorm.freeze_batch_norms(model)
    elif mode == "reestimate":
        batches = islice(loader, REESTIMATE_BATCHES)
        batchnorm.reestimate_batch_norms(model, (images.to(device) for images, _ in batches))
    return mode


def pick_device(requested: str, workers: distributed.Workers) -> torch.device:
    """`auto`: this worker's GPU when there is one (one GPU per worker), else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        torch.cuda.set_device(workers.local_rank)
        return torch.device("cuda", workers.local_rank)
    return torch.device(requested)


def autocast_dtype_for(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The mixed-precision type: bf16 where the hardware computes it natively, else full precision.

    `auto` uses bf16 on a GPU that supports it (fp16 on older ones) and on a CPU with AVX-512 BF16/AMX,
    where the hardware computes bf16 natively and a training step is much faster than in fp32.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if precision == "bf16" or native else None


def resume(
    training: Training, args: argparse.Namespace, workers: distributed.Workers
) -> tuple[int, list[dict], str | None]:
    """Continue from the last checkpoint if there is one.

    Returns:
        The first epoch to run, the history so far, and the MLflow run to continue (None: a new one).
    """
    uri = ckpt.last_checkpoint(args.checkpoint_dir) if args.resume else None
    if uri is None:
        return 1, [], None
    state_dict, state = ckpt.load_training_state(uri)
    training.model.load_state_dict(state_dict)
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    ckpt.restore_rng_state(state["rng_states"][workers.rank])
    return state["epoch"] + 1, state["history"], state.get("mlflow_run_id")


def progress_printer(epoch: int, epochs: int, loader: DataLoader, reports: int = 10):
    """A callback for `train_one_epoch` that prints about `reports` lines an epoch: batches, loss, rate."""
    total, started = len(loader), time.perf_counter()
    every = max(1, total // reports)

    def report(done: int, mean_loss: float) -> None:
        if done % every == 0 or done == total:
            rate = done * loader.batch_size / (time.perf_counter() - started)
            print(f"epoch {epoch}/{epochs}  batch {done}/{total}  loss {mean_loss:.4f}  "
                  f"{rate:.1f} images/s per worker", flush=True)  # fmt: skip

    return report


def run_epoch(training: Training, epoch: int, workers: distributed.Workers, epochs: int) -> dict:
    """Train one epoch, validate on each domain, and average the metrics over all workers.

    `val_loss` and `val_iou` are over all validation pairs; `val_iou_<domain>` per domain.
    """
    training.train_loader.sampler.set_epoch(epoch)
    progress = progress_printer(epoch, epochs, training.train_loader) if workers.is_root else None
    train_loss = train_one_epoch(training.model, training.train_loader, training.optimizer, training.device,
                                 training.autocast_dtype, training.scheduler, progress)  # fmt: skip
    distributed.average_buffers(training.model)
    sums = {"train_loss_sum": train_loss}
    for domain, loader in training.val_loaders.items():
        scores = evaluate(training.model, loader, training.device)
        sums |= {f"{domain}/{name}": value for name, value in scores.items()}
    total = distributed.sum_across_workers(sums)
    domains = training.val_loaders
    count = max(sum(total[f"{d}/count"] for d in domains), 1.0)
    metrics = {"epoch": epoch, "train_loss": total["train_loss_sum"] / workers.size,
               "val_loss": sum(total[f"{d}/loss_sum"] for d in domains) / count,
               "val_iou": sum(total[f"{d}/iou_sum"] for d in domains) / count,
               "lr": training.scheduler.get_last_lr()[0]}  # fmt: skip
    return metrics | {f"val_iou_{d}": total[f"{d}/iou_sum"] / max(total[f"{d}/count"], 1.0) for d in domains}


def save_epoch(training: Training, args: argparse.Namespace, epoch: int, history: list[dict],
               workers: distributed.Workers, run_id: str | None) -> None:  # fmt: skip
    """Every worker hands its RNG state to rank 0, which writes the checkpoint."""
    rng_states = distributed.gather_objects(ckpt.rng_state())
    if workers.is_root:
        ckpt.save_training_state(args.checkpoint_dir, model=training.model, variant=args.model,
                                 input_size=args.input_size, optimizer=training.optimizer,
                                 scheduler=training.scheduler, epoch=epoch, history=history,
                                 rng_states=rng_states, mlflow_run_id=run_id)  # fmt: skip


def main(args: argparse.Namespace) -> list[dict]:
    """Train, validating and checkpointing after every epoch; return the per-epoch metrics."""
    return train(args)[1]


def train(args: argparse.Namespace) -> tuple[Training, list[dict]]:
    """Like `main`, also returning the trained state (tests compare it across workers)."""
    workers = distributed.init()
    torch.manual_seed(args.seed + workers.rank)  # each worker augments differently, repeatably
    device = pick_device(args.device, workers)
    # Every worker pins the alias itself; rank 0's weights win anyway (broadcast_state below).
    args.pretrained = pin_pretrained(args.pretrained, args.tracking_uri, workers.is_root, args.model)
    model = get_model(args, device)
    train_loader, val_loaders = get_loaders(args, workers, device)
    args.batch_norm = prepare_batch_norms(model, args.batch_norm, train_loader, device)
    optimizer = get_optimizer(model, args, workers)
    training = Training(model, optimizer, get_scheduler(optimizer, args, len(train_loader)), train_loader,
                        val_loaders, device, autocast_dtype_for(device, args.precision))  # fmt: skip
    first_epoch, history, run_id = resume(training, args, workers)
    distributed.broadcast_state(model, optimizer)
    tracker = TrainingTracker.for_rank(workers, args, run_id)
    for epoch in range(first_epoch, args.epochs + 1):
        history.append(run_epoch(training, epoch, workers, args.epochs))
        save_epoch(training, args, epoch, history, workers, tracker.run_id)
        tracker.log_epoch(history[-1])
    tracker.finish(ckpt.last_checkpoint(args.checkpoint_dir) if workers.is_root else None)
    return training, history


def get_args_parser() -> argparse.ArgumentParser:
    """`cutout train`'s parser: one flag per `TrainConfig` setting."""
    return config_parser()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`cutout train` arguments as the settings `main` reads (``--pretrained none`` read as no weights)."""
    return _namespace(TrainConfig.parse(argv))


def _namespace(config: TrainConfig) -> argparse.Namespace:
    return argparse.Namespace(**dataclasses.asdict(config))


def cli(argv: Sequence[str] | None = None) -> int:
    """Parse, then train here, or relaunch under `horovodrun` when `--workers N` asks for it."""
    config = TrainConfig.parse(sys.argv[1:] if argv is None else argv)
    if config.find_batch_size:
        from cutout.train.batch_size import report_largest_batch

        return report_largest_batch(_namespace(config))
    if config.workers > 1 and not distributed.launched_by_horovod():
        # Each worker runs this same command, one process of the group.
        return distributed.run_local_workers(config.workers, config.replace(workers=1).to_argv())
    main(_namespace(config))
    return 0
