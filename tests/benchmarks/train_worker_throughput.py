"""Run by bench_train.py, alone or under `horovodrun`: time training steps and the data loader alone."""

import itertools
import json
import sys
import time

import torch

from cutout.train import distributed
from cutout.train.engine import train_one_epoch
from cutout.train.train import autocast_dtype_for, get_loaders, get_model, get_optimizer, parse_args

WARMUP_STEPS, TIMED_STEPS = 2, 8


def images_per_second(run, batches: int, batch_size: int) -> float:
    start = time.perf_counter()
    run()
    return batches * batch_size / (time.perf_counter() - start)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    workers = distributed.init()
    device = torch.device("cpu")
    model = get_model(args, device)
    loader, _ = get_loaders(args, workers, device)
    optimizer = get_optimizer(model, args, workers)
    dtype = autocast_dtype_for(device, args.precision)
    steps = lambda n: itertools.islice(itertools.cycle(loader), n)  # noqa: E731
    train_one_epoch(model, steps(WARMUP_STEPS), optimizer, device, dtype)
    timed_training = lambda: train_one_epoch(model, steps(TIMED_STEPS), optimizer, device, dtype)  # noqa: E731
    model_rate = images_per_second(timed_training, TIMED_STEPS, args.batch_size)
    loader_rate = images_per_second(lambda: list(steps(TIMED_STEPS)), TIMED_STEPS, args.batch_size)
    if workers.is_root:
        print("RESULT " + json.dumps({"model_images_per_s": model_rate, "loader_images_per_s": loader_rate}))
