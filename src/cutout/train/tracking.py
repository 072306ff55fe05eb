"""What rank 0 records while training: TensorBoard events and an MLflow run (params, per-epoch metrics,
the TensorBoard logs, the trained model with its tags).

Other ranks get a tracker that records nothing, so the training loop never asks who it is. A resumed
job continues the MLflow run of the job it replaces (the run id travels in the checkpoint).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cutout.data.manifest import manifest_hash
from cutout.platform import storage
from cutout.train.distributed import Workers

PARAMS = ("data", "extra_data", "val_data", "extra_val_data", "model", "pretrained", "batch_norm", "epochs",
          "batch_size", "lr", "warmup_epochs", "input_size", "crop", "seed", "workers")  # fmt: skip


class TrainingTracker:
    """Rank 0's recorder; `None` folders and runs make it silent."""

    def __init__(self, args: argparse.Namespace | None, run_id: str | None = None, workers: int = 1):
        self.args = args
        self.writer = None
        self.run_id = None
        if args is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(args.log_dir)
        if args.tracking:
            self.run_id = self._start_run(args, run_id, workers)

    @staticmethod
    def _start_run(args: argparse.Namespace, run_id: str | None, workers: int) -> str:
        import mlflow

        from cutout.platform import tracking

        tracking.configure_tracking(args.tracking_uri)
        if run_id is not None:  # a restarted job: same run, metrics continue where they stopped
            return mlflow.start_run(run_id=run_id).info.run_id
        run = tracking.start_run(args.run_name, tags=tracking.run_tags(manifest_hash(args.data), args.model))
        tracking.log_params({name: getattr(args, name) for name in PARAMS} | {"workers": workers})
        return run.info.run_id

    @classmethod
    def for_rank(
        cls, workers: Workers, args: argparse.Namespace, run_id: str | None = None
    ) -> TrainingTracker:
        """A recording tracker on rank 0, a silent one elsewhere."""
        return cls(args if workers.is_root else None, run_id, workers.size)

    def log_epoch(self, metrics: dict) -> None:
        """One epoch's metrics, at step = epoch."""
        if self.writer is None:
            return
        domains = "".join(f"  {name.removeprefix('val_iou_')} {value:.4f}"
                          for name, value in metrics.items() if name.startswith("val_iou_"))  # fmt: skip
        print(f"epoch {metrics['epoch']:3d}  train loss {metrics['train_loss']:.4f}  "
              f"val loss {metrics['val_loss']:.4f}  val IoU {metrics['val_iou']:.4f}{domains}  "
              f"lr {metrics['lr']:.2e}", flush=True)  # fmt: skip
        per_domain = [name for name in metrics if name.startswith("val_iou_")]
        values = {name: metrics[name] for name in ("train_loss", "val_loss", "val_iou", "lr", *per_domain)}
        for name, value in values.items():
            self.writer.add_scalar(name, value, metrics["epoch"])
        self.writer.flush()
        if self.run_id is not None:
            from cutout.platform.tracking import log_epoch_metrics

            log_epoch_metrics(values, metrics["epoch"])

    def finish(self, checkpoint: str | None) -> None:
        """Close the event files; log them and the trained model to the run; say where everything is."""
        if self.writer is None:
            return
        self.writer.close()
        info = {"checkpoint": checkpoint, "run_id": self.run_id, "model_uri": None}
        if self.run_id is not None:
            info["model_uri"] = self._log_outputs(checkpoint)
        print("trained: " + json.dumps(info), flush=True)
        if self.args.run_info:
            storage.write_text(self.args.run_info, json.dumps(info, indent=2))

    def _log_outputs(self, checkpoint: str | None) -> str | None:
        import mlflow

        from cutout.platform.tracking import log_tensorboard
        from cutout.train.logged_model import log_model

        log_tensorboard(Path(self.args.log_dir))
        model_uri = log_model(checkpoint, run_id=self.run_id) if checkpoint else None
        mlflow.end_run()
        return model_uri
