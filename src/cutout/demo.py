"""`make demo`: the main job on the embedded default — no cluster, no cloud, nothing downloaded.

Synthetic studio catalogue → a U²-NetP trained here → exported to ONNX → `cutout remove` on held-out
studio photos at full resolution → an HTML page comparing each cutout with the true mask.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from cutout.data.io import read_image
from cutout.data.synth import generate_pair, synthesize_dataset
from cutout.evaluate.gallery import GalleryRow, write_gallery
from cutout.evaluate.metrics import mask_iou
from cutout.train.local import EpochResult, train_locally

console = Console()


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _run_cli(*args: str) -> None:
    """Run a `cutout` command as a user would, showing it first."""
    command = [sys.executable, "-m", "cutout.cli", *args]
    console.print(f"$ cutout {' '.join(args)}", style="cyan", highlight=False)
    completed = subprocess.run(command, check=False)
    if completed.returncode not in (0, 1):  # 1 = some inputs failed, reported by the command itself
        raise SystemExit(f"cutout {args[0]} failed with status {completed.returncode}")


def _held_out_photos(folder: Path, count: int, seed: int) -> dict[str, np.ndarray]:
    """Full-resolution studio photos the model never saw, with their true masks."""
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for index in range(count):
        photo, mask, product_type = generate_pair(index, size=(1000, 1500), seed=seed)
        name = f"{index:02d}-{product_type}"
        photo.save(folder / f"{name}.jpg", quality=92)
        truths[name] = mask
    return truths


def _predicted_mask(cutout_file: Path) -> np.ndarray:
    with Image.open(cutout_file) as cutout:
        return np.asarray(cutout.getchannel("A")) >= 128


def _agreement(fp32: Path, int8: Path, truths: dict[str, np.ndarray]) -> float:
    """Mean IoU between the int8 model's masks and the fp32 model's: what quantisation costs."""
    return float(
        np.mean(
            [mask_iou(_predicted_mask(int8 / f"{n}.png"), _predicted_mask(fp32 / f"{n}.png")) for n in truths]
        )
    )


def _report(photos: Path, cutouts: Path, truths: dict[str, np.ndarray], out: Path) -> tuple[str, float]:
    rows, scores = [], []
    for name, truth in truths.items():
        cutout = Image.open(cutouts / f"{name}.png")
        alpha = np.asarray(cutout.getchannel("A"))
        scores.append(mask_iou(alpha >= 128, truth))
        images = {"photo": read_image(photos / f"{name}.jpg"), "true mask": Image.fromarray(truth),
                  "predicted mask": Image.fromarray(alpha), "cutout": cutout}  # fmt: skip
        rows.append(GalleryRow(f"{name}  IoU {scores[-1]:.3f}", images))
    mean = float(np.mean(scores))
    page = write_gallery(str(out), "cutout demo: held-out studio photos", rows, f"mean IoU {mean:.3f}")
    return page, mean


def run_demo(workdir: Path, pairs: int, epochs: int, input_size: int, batch_size: int, held_out: int) -> None:
    """Run every step of the demo inside `workdir` and print where the results are."""
    started = time.perf_counter()
    _step(f"1. Synthesise a studio catalogue: {pairs} training and {pairs // 4} validation pairs")
    synthesize_dataset(str(workdir / "data" / "train"), pairs, seed=0)
    synthesize_dataset(str(workdir / "data" / "val"), pairs // 4, seed=1)

    _step(f"2. Train U²-NetP for {epochs} epochs at {input_size} px on the CPU")
    checkpoint = workdir / "model" / "u2netp-demo.pt"

    def show(result: EpochResult) -> None:
        console.print(f"epoch {result.epoch:2d}  train loss {result.train_loss:.3f}  "
                      f"val loss {result.val_loss:.3f}  val IoU {result.val_iou:.3f}")  # fmt: skip

    train_locally(str(workdir / "data" / "train"), str(workdir / "data" / "val"), str(checkpoint),
                  epochs=epochs, input_size=input_size, batch_size=batch_size, on_epoch=show)  # fmt: skip

    _step("3. Export to ONNX: fp32, and int8 calibrated on the training photos")
    fp32, int8 = workdir / "model" / "u2netp-demo.onnx", workdir / "model" / "u2netp-demo-int8.onnx"
    _run_cli("export", "onnx", "--model", str(checkpoint), "-o", str(fp32))
    calibration = str(workdir / "data" / "train" / "images")
    _run_cli(
        "export", "onnx", "--model", str(checkpoint), "-o", str(int8), "--int8", "--calibration", calibration
    )

    _step(f"4. Cut out {held_out} held-out 1000×1500 studio photos, with each model")
    photos, cutouts = workdir / "photos", workdir / "cutouts"
    truths = _held_out_photos(photos, held_out, seed=2)
    _run_cli("remove", str(photos), "-o", str(cutouts / "fp32"), "--model", str(fp32))
    _run_cli("remove", str(photos), "-o", str(cutouts / "int8"), "--model", str(int8))

    _step("5. Compare with the true masks")
    page, mean_iou = _report(photos, cutouts / "fp32", truths, workdir / "report")
    agreement = _agreement(cutouts / "fp32", cutouts / "int8", truths)
    console.print(f"mean IoU on held-out photos: [bold]{mean_iou:.3f}[/bold] (fp32); "
                  f"int8 masks against fp32 masks: mean IoU {agreement:.4f}")  # fmt: skip
    console.print(f"cutouts: {cutouts}\nreport:  {page}\nmodels:  {checkpoint}, {fp32}, {int8}")
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".cutout/demo"))
    parser.add_argument("--pairs", type=int, default=96, help="synthetic training pairs")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=8, help="full-resolution photos to cut out")
    args = parser.parse_args()
    run_demo(args.workdir, args.pairs, args.epochs, args.input_size, args.batch_size, args.held_out)


if __name__ == "__main__":
    main()
