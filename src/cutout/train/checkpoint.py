"""Training checkpoints: everything a restarted job needs to finish with the same result.

A checkpoint is a cutout checkpoint (the model's weights, variant, input size — loadable by
`cutout.model.load_model` for inference) plus the optimizer, the scheduler, the epoch, the history
and every worker's RNG state. Rank 0 writes it after each epoch, atomically (local or s3://).
"""

from __future__ import annotations

from typing import Any

import torch

from cutout.model.weights import read_state_dict, save_checkpoint
from cutout.platform import storage

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    """This worker's random state (all of it lives in torch: transforms and shuffling use torch)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back a state saved by `rng_state`."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint(checkpoint_dir: str) -> str | None:
    """The checkpoint to resume from, if a previous attempt left one."""
    uri = storage.join(checkpoint_dir, LAST)
    return uri if storage.exists(uri) else None


def save_training_state(checkpoint_dir: str, *, model: torch.nn.Module, variant: str, input_size: int,
                        optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
                        history: list[dict], rng_states: list[dict],
                        mlflow_run_id: str | None = None) -> str:  # fmt: skip
    """Write `last.pt` (replacing the previous one whole) and return its URI."""
    uri = storage.join(checkpoint_dir, LAST)
    save_checkpoint(uri, model, variant, input_size=input_size, optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), epoch=epoch, history=history,
                    rng_states=rng_states, mlflow_run_id=mlflow_run_id)  # fmt: skip
    return uri


def load_training_state(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's state dict and the rest of a training checkpoint (epoch, optimizer, RNG states...)."""
    return read_state_dict(uri)
