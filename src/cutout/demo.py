"""`make demo`: the loop so far on the embedded default — no cluster, no cloud, nothing downloaded.

A synthetic studio catalogue goes through every step as a user would run it: `cutout data synth`,
`clean`, `cluster`, `augment` → `cutout train` with two Horovod workers (U²-NetP) → `cutout evaluate`
on the held-out split → `cutout register` and `cutout promote` in the local MLflow registry →
`cutout remove` with `models:/cutout@champion` on full-resolution studio photos the model never saw,
compared with their true masks on an HTML page.

The MLflow store (`<workdir>/mlflow.db`) survives a new run of the demo, so a second run shows the
promotion gate at work; everything else in the work folder is made afresh.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from cutout.data.io import read_image
from cutout.data.synth import generate_pair
from cutout.evaluate.gallery import GalleryRow, write_gallery
from cutout.evaluate.metrics import mask_iou
from cutout.serve.local import start_local_service

console = Console()
STUDIO_SIZE = (1000, 1500)
FRESH = ("raw", "clean", "clustered", "augmented", "checkpoints", "tensorboard", "evaluation", "photos",
         "cutouts", "report", "run-low-resolution.json", "run-final.json", "calibration", "feedback",
         "serving")  # fmt: skip


@dataclass(frozen=True)
class DemoSettings:
    """What the demo makes and how long it trains; the defaults fit in 10 minutes on 2 cores."""

    pairs: int = 400  # raw synthetic catalogue photos, before cleaning
    photo_size: tuple[int, int] = (400, 600)
    copies: int = 2  # augmented variants per training pair
    # Progressive resizing: most epochs at a low resolution, where a step costs 2.8 times less than at
    # 160 px, then a short fine-tune at the resolution the model serves at. Measured on held-out studio
    # photos: 8 epochs at 96 px alone gave mean IoU 0.934; one more epoch at 160 px, 0.962.
    epochs: int = 6
    input_size: int = 96
    finish_epochs: int = 1
    finish_size: int = 160
    batch_size: int = 8
    lr: float = 2e-3
    finish_lr: float = 5e-4
    workers: int = 2
    held_out: int = 16  # full-resolution photos cut out at the end
    served: int = 4  # of those, photos sent through the local KServe servers


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _run_cli(*args: str, env: dict[str, str], capture: bool = False) -> str:
    """Run a `cutout` command as a user would, showing it first; returns its output when `capture`."""
    command = [sys.executable, "-m", "cutout.cli", *args]
    console.print(f"$ cutout {' '.join(args)}", style="cyan", highlight=False)
    completed = subprocess.run(command, check=False, env=env, text=True, capture_output=capture)
    if capture:
        console.print(completed.stdout, end="", highlight=False)
    if completed.returncode not in (0, 1):  # 1 = some inputs failed, reported by the command itself
        raise SystemExit(
            f"cutout {args[0]} failed with status {completed.returncode}:\n{completed.stderr or ''}"
        )
    return completed.stdout or ""


def _held_out_photos(folder: Path, count: int, seed: int) -> dict[str, np.ndarray]:
    """Full-resolution studio photos the model never saw, with their true masks."""
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for index in range(count):
        photo, mask, product_type = generate_pair(index, size=STUDIO_SIZE, seed=seed)
        name = f"{index:02d}-{product_type}"
        photo.save(folder / f"{name}.jpg", quality=92)
        truths[name] = mask
    return truths


def _report(photos: Path, cutouts: Path, truths: dict[str, np.ndarray], out: Path) -> tuple[str, float]:
    """A page with each held-out photo, its true and predicted masks and the cutout; the mean IoU."""
    rows, scores = [], []
    for name, truth in truths.items():
        cutout = Image.open(cutouts / f"{name}.png")
        alpha = np.asarray(cutout.getchannel("A"))
        scores.append(mask_iou(alpha >= 128, truth))
        images = {"photo": read_image(photos / f"{name}.jpg"), "true mask": Image.fromarray(truth),
                  "predicted mask": Image.fromarray(alpha), "cutout": cutout}  # fmt: skip
        rows.append(GalleryRow(f"{name}  IoU {scores[-1]:.3f}", images))
    mean = float(np.mean(scores))
    title = "cutout demo: held-out studio photos, cut out by models:/cutout@champion"
    page = write_gallery(str(out), title, rows, f"mean IoU {mean:.3f}")
    return page, mean


def _fresh_workdir(workdir: Path) -> None:
    """Remove what an earlier demo made here, except the MLflow store (its registry history)."""
    for name in FRESH:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)


def _environment(workdir: Path) -> dict[str, str]:
    # The demo's own MLflow store: a sqlite file with its artifacts beside it.
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir.absolute() / 'mlflow.db'}"}


def _prepare_data(w: Path, s: DemoSettings, env: dict[str, str]) -> None:
    width, height = s.photo_size
    _step(f"1. Data: synthesise {s.pairs} studio photos, clean, cluster into product types, augment")
    _run_cli("data", "synth", str(w / "raw"), "--count", str(s.pairs), "--size", str(width), str(height),
             env=env)  # fmt: skip
    _run_cli("data", "clean", str(w / "raw"), str(w / "clean"), env=env)
    _run_cli("data", "cluster", str(w / "clean"), str(w / "clustered"), "--val-fraction", "0.15", env=env)
    _run_cli(
        "data", "augment", str(w / "clustered"), str(w / "augmented"), "--copies", str(s.copies), env=env
    )


def _train_stage(w: Path, s: DemoSettings, env: dict[str, str], stage: str, **options: object) -> dict:
    """One `cutout train` run on the augmented data; returns its run info (run id, model URI, checkpoint)."""
    options = {"model": "u2netp", "workers": s.workers, "batch_size": s.batch_size, "loader_workers": 1,
               "checkpoint_dir": w / "checkpoints" / stage, "log_dir": w / "tensorboard" / stage,
               "run_name": f"demo-{stage}", "run_info": w / f"run-{stage}.json", **options}  # fmt: skip
    flags = [str(x) for name, value in options.items() for x in (f"--{name.replace('_', '-')}", value)]
    _run_cli("train", str(w / "augmented"), *flags, env=env)
    return json.loads((w / f"run-{stage}.json").read_text())


def _train(w: Path, s: DemoSettings, env: dict[str, str]) -> dict:
    _step(f"2. Train U²-NetP with {s.workers} Horovod workers: {s.epochs} epochs at {s.input_size} px, "
          f"then {s.finish_epochs} at {s.finish_size} px")  # fmt: skip
    first = _train_stage(w, s, env, "low-resolution", epochs=s.epochs, input_size=s.input_size,
                         crop=s.input_size, lr=s.lr, warmup_epochs=0.3)  # fmt: skip
    return _train_stage(w, s, env, "final", pretrained=first["checkpoint"], epochs=s.finish_epochs,
                        input_size=s.finish_size, crop=s.finish_size, lr=s.finish_lr,
                        warmup_epochs=0.1)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ask_for_cutout(url: str, photo: Path) -> dict:
    """One v1 request, as a catalogue system sends it."""
    body = json.dumps({"instances": [{"image_b64": base64.b64encode(photo.read_bytes()).decode()}]}).encode()
    request = urllib.request.Request(
        f"{url}/v1/models/cutout:predict", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _serve_a_few(w: Path, photos: list[Path], env: dict[str, str]) -> None:
    """Predictor and feedback transformer on 127.0.0.1 (`cutout serve local`); send photos through them."""
    feedback = w / "feedback"
    port = _free_port()
    console.print(
        f"$ cutout serve local --feedback-uri {feedback} --port {port}", style="cyan", highlight=False
    )
    # `env` points the servers at the demo's MLflow store, where they find the champion.
    with start_local_service(feedback_uri=str(feedback), port=port, predictor_port=_free_port(),
                             log_dir=w / "serving", env=env):  # fmt: skip
        for photo in photos:
            answer = _ask_for_cutout(f"http://127.0.0.1:{port}", photo)
            prediction = answer["predictions"][0]
            console.print(f"{photo.name}: {prediction['width']}×{prediction['height']} cutout, quality score "
                          f"{prediction['score']:.3f}, model version {answer['model_version']}")  # fmt: skip
    auto = len(list((feedback / "retrain" / "auto" / "records").glob("*.json")))
    review = len(list((feedback / "review" / "pending").glob("*/item.json")))
    console.print(f"routed: {auto} to the retraining store, {review} to the review queue ({feedback})")


def _evaluate_and_promote(w: Path, run: dict, env: dict[str, str]) -> str:
    _step("3. Evaluate on the held-out split, register, promote if at least as good as the champion")
    holdout = str(w / "clustered")
    _run_cli("evaluate", "--model", run["model_uri"], "--data", holdout, "--split", "val",
             "--out", str(w / "evaluation"), "--run-id", run["run_id"], env=env)  # fmt: skip
    metrics = str(w / "evaluation" / "metrics.json")
    output = _run_cli("register", "--run-id", run["run_id"], "--metrics", metrics, "--holdout", holdout,
                      env=env, capture=True)  # fmt: skip
    version = output.split()[0]
    _run_cli("promote", "--version", version, env=env)
    # The quality score's routing threshold, chosen on the same held-out split and stored on the version.
    _run_cli("calibrate-threshold", "--model", f"models:/cutout/{version}", "--data", holdout,
             "--out", str(w / "calibration"), env=env)  # fmt: skip
    return str(w / "evaluation" / "index.html")


def run_demo(workdir: Path, settings: DemoSettings = DemoSettings()) -> float:
    """Run every step of the demo inside `workdir`, print where the results are; returns the mean IoU."""
    started = time.perf_counter()
    _fresh_workdir(workdir)
    env = _environment(workdir)
    _prepare_data(workdir, settings, env)
    run = _train(workdir, settings, env)
    evaluation = _evaluate_and_promote(workdir, run, env)

    _step(f"4. Cut out {settings.held_out} held-out {STUDIO_SIZE[0]}×{STUDIO_SIZE[1]} studio photos")
    photos, cutouts = workdir / "photos", workdir / "cutouts"
    truths = _held_out_photos(photos, settings.held_out, seed=10_000)
    _run_cli("remove", str(photos), "-o", str(cutouts), "--model", "models:/cutout@champion", env=env)
    page, mean_iou = _report(photos, cutouts, truths, workdir / "report")

    _step("5. Serve the champion locally and send a few photos through the feedback transformer")
    _serve_a_few(workdir, sorted(photos.glob("*.jpg"))[: settings.served], env)

    _step("Results")
    console.print(f"mean IoU of the champion's cutouts against the true masks: [bold]{mean_iou:.3f}[/bold]")
    console.print(f"cutouts:           {cutouts}\ncutouts vs truth:  {page}\n"
                  f"evaluation report: {evaluation}\n"
                  f"routing threshold: {workdir / 'calibration' / 'index.html'}\n"
                  f"feedback store:    {workdir / 'feedback'} (retrain/auto, review/pending)")  # fmt: skip
    store = env["MLFLOW_TRACKING_URI"]
    console.print(f"MLflow store:      {store} (run {run['run_id']})\n"
                  f"  look at it with: mlflow ui --backend-store-uri {store}")  # fmt: skip
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return mean_iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".cutout/demo"))
    defaults = DemoSettings()
    for field in fields(DemoSettings):
        if field.name != "photo_size":
            default = getattr(defaults, field.name)
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default)
    args = vars(parser.parse_args())
    workdir = args.pop("workdir")
    run_demo(workdir, DemoSettings(**args))


if __name__ == "__main__":
    main()
