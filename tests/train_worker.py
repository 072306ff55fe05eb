"""Run under `horovodrun` by test_train.py: train, then report what each rank ended with, as JSON."""

import hashlib
import json
import sys

import torch

from cutout.train.distributed import init
from cutout.train.engine import evaluate
from cutout.train.train import parse_args, train


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    training, history = train(parse_args(sys.argv[1:]))
    # This rank's shard only, summed over the validation domains.
    scores = [evaluate(training.model, loader, training.device) for loader in training.val_loaders.values()]
    local = {name: sum(score[name] for score in scores) for name in scores[0]}
    report = {
        "rank": init().rank,
        "weights": weights_digest(training.model),
        "local": local,
        "last": history[-1],
    }
    print("REPORT " + json.dumps(report), flush=True)
