"""What rank 0 records while training: TensorBoard events, and (when tracking is on) an MLflow run.

Other ranks get a tracker that records nothing, so the training loop never asks who it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cutout.train.distributed import Workers


class TrainingTracker:
    """Rank 0's recorder: per-epoch loss, learning rate and IoU to TensorBoard."""

    def __init__(self, log_dir: Path | None):
        self.log_dir = log_dir
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    @classmethod
    def for_rank(cls, workers: Workers, args: argparse.Namespace) -> TrainingTracker:
        """A recording tracker on rank 0, a silent one elsewhere."""
        return cls(Path(args.log_dir) if workers.is_root else None)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--log-dir", default=".cutout/tensorboard", help="TensorBoard event folder (local)"
        )

    def log_epoch(self, metrics: dict) -> None:
        """One epoch's metrics, at step = epoch."""
        if self.writer is None:
            return
        print(f"epoch {metrics['epoch']:3d}  train loss {metrics['train_loss']:.4f}  "
              f"val loss {metrics['val_loss']:.4f}  val IoU {metrics['val_iou']:.4f}  lr {metrics['lr']:.2e}",
              flush=True)  # fmt: skip
        for name in ("train_loss", "val_loss", "val_iou", "lr"):
            self.writer.add_scalar(name, metrics[name], metrics["epoch"])
        self.writer.flush()

    def finish(self, checkpoint: str | None, history: list[dict]) -> None:
        """Close the event files."""
        if self.writer is not None:
            self.writer.close()
