"""`cutout train`'s settings in one typed place: the argument parser, the pipeline and the launchers read it.

Each field is one flag of `cutout train` (``input_size`` → ``--input-size``) with its default and help.
The parser is built from the fields; `TrainConfig.to_argv` writes a config back as the flags that
differ from the defaults, so a launcher (horovodrun here, an MPIJob on the cluster) passes typed settings
on without spelling a flag by hand, and parsing them again gives the same config.

The defaults are the recipe for real photos: fine-tune the official U²-NetP at a small rate (1e-4 lost
real-photo quality, 3e-5 gained). Training from scratch is ``--pretrained none`` and wants a larger rate
(about 1e-3).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VARIANTS = ("u2net", "u2netp")
BATCH_NORM_MODES = ("auto", "frozen", "reestimate", "train")  # see cutout.train.batchnorm
FROM_SCRATCH = "none"  # `--pretrained none`: no starting weights


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run (`HELP` says what each does); see `cutout train --help`."""

    data: str = ""  # the one positional argument
    val_data: str | None = None
    extra_data: tuple[str, ...] = ()
    extra_val_data: tuple[str, ...] = ()
    model: str = "u2netp"
    pretrained: str | None = "u2netp"
    batch_norm: str = "auto"
    epochs: int = 30
    batch_size: int = 10
    lr: float = 3e-5
    warmup_epochs: float = 1.0
    input_size: int = 320
    crop: int = 288
    checkpoint_dir: str = ".cutout/checkpoints"
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    loader_workers: int = 2
    workers: int = 1
    find_batch_size: bool = False
    log_dir: str = ".cutout/tensorboard"
    tracking: bool = True
    tracking_uri: str | None = None
    run_name: str | None = None
    run_info: str | None = None

    def __post_init__(self) -> None:
        # Lists from a parser or a caller become tuples: the config stays hashable and immutable.
        for name in ("extra_data", "extra_val_data"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.pretrained in ("", FROM_SCRATCH):
            object.__setattr__(self, "pretrained", None)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def to_argv(self) -> list[str]:
        """The `cutout train` arguments for this config: the data, then every flag off its default."""
        argv = [self.data]
        for setting in dataclasses.fields(self)[1:]:
            value, default = getattr(self, setting.name), setting.default
            if value == default:
                continue
            flag = _flag_name(setting.name)
            if isinstance(value, bool):
                argv.append(flag if value else f"--no-{flag[2:]}")
            elif isinstance(value, tuple):
                argv += [item for entry in value for item in (flag, entry)]
            else:
                argv += [flag, FROM_SCRATCH if value is None else str(value)]
        return argv

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        """The config a parser from `add_arguments` read."""
        return cls(**{setting.name: getattr(args, setting.name) for setting in dataclasses.fields(cls)})

    @classmethod
    def parse(cls, argv: Sequence[str]) -> TrainConfig:
        """Read `cutout train` arguments."""
        return cls.from_namespace(parser().parse_args(list(argv)))


DEFAULTS = TrainConfig()
HELP = {
    "data": "prepared dataset (folder or s3://) with a train/val `split` field",
    "val_data": "a separate validation dataset (instead of the `val` split)",
    "extra_data": "also train on every pair of this dataset (repeatable), e.g. real photos beside the "
    "synthetic catalogue",
    "extra_val_data": "also validate on this dataset (repeatable), e.g. real photos beside a synthetic "
    "split; metrics per `domain` of the records",
    "model": "the network",
    "pretrained": "fine-tune from: a built-in model (u2netp), an official .pth or .onnx, a cutout checkpoint "
    "(local or s3://), or models:/cutout@champion (no such version yet: the built-in u2netp, or from "
    f"scratch for u2net, with a note); {FROM_SCRATCH}: from scratch",
    "batch_norm": "auto: frozen for folded pretrained weights (the built-in u2netp), train otherwise "
    "(see cutout.train.batchnorm)",
    "epochs": "passes over the training data",
    "batch_size": "per worker (10 × workers in all)",
    "lr": "Adam's rate per worker, scaled by the number of workers; about 1e-3 from scratch",
    "warmup_epochs": "epochs of linear warm-up before the cosine decay",
    "input_size": "photos are resized to this square",
    "crop": "random crop for training (at most --input-size)",
    "checkpoint_dir": "local or s3://",
    "resume": "continue from the last checkpoint",
    "seed": "same seed, same run",
    "device": "where to train",
    "precision": "auto: bf16 where the GPU or CPU computes it natively",
    "loader_workers": "DataLoader processes per worker",
    "workers": "run this many local Horovod workers for you",
    "find_batch_size": "probe the largest batch that fits",
    "log_dir": "TensorBoard event folder (local)",
    "tracking": "log the run to MLflow (default: on)",
    "tracking_uri": "MLflow server or database (default: $MLFLOW_TRACKING_URI, else .cutout/mlflow.db)",
    "run_name": "MLflow run name",
    "run_info": "write the run id, model URI and checkpoint here as JSON",
}
CHOICES = {"model": VARIANTS, "batch_norm": BATCH_NORM_MODES, "device": ("auto", "cpu", "cuda"),
           "precision": ("auto", "fp32", "bf16")}  # fmt: skip
CLUSTER_LOG_DIR = "/tmp/tensorboard"  # in the pod; the run uploads the TensorBoard logs to MLflow


def on_cluster_ranks(config: TrainConfig, gpus: bool) -> TrainConfig:
    """The config every rank of a cluster job runs: a retried job resumes from its checkpoint folder,
    TensorBoard writes inside the pod, and ranks train on their GPU where they have one."""
    return config.replace(resume=True, log_dir=CLUSTER_LOG_DIR, device="cuda" if gpus else config.device)


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per `TrainConfig` field, with its default, type, choices and help."""
    positional, *flags = dataclasses.fields(TrainConfig)
    parser.add_argument(positional.name, help=HELP[positional.name])
    for setting in flags:
        options = {"help": HELP[setting.name], "choices": CHOICES.get(setting.name)}
        if isinstance(setting.default, tuple):
            options["metavar"] = "DATA"
        default = setting.default
        if isinstance(default, bool):
            action = argparse.BooleanOptionalAction if default else "store_true"
            options.pop("choices")
            parser.add_argument(_flag_name(setting.name), action=action, default=default, **options)
        elif isinstance(default, tuple):
            parser.add_argument(_flag_name(setting.name), action="append", default=[], **options)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(_flag_name(setting.name), type=kind, default=default, **options)


def parser() -> argparse.ArgumentParser:
    """`cutout train`'s argument parser."""
    built = argparse.ArgumentParser(
        prog="cutout train", description="Train U²-Net (alone, or under horovodrun / an MPIJob).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    add_arguments(built)
    return built
