"""Inference benchmarks (`make bench`): ms per image for each back end, and `cutout remove` end to end.

Each configuration runs in its own process, so its peak RSS is its own. Weights are random: speed does
not depend on their values.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZE = 320
E2E_PHOTO = (1000, 1500)
# The final training stage of the demo's first pipeline run (`runs/1-train/<run>/training/...`).
DEMO_CHECKPOINTS = ".cutout/demo/runs/1-train/*/training/checkpoints/final/last.pt"


def demo_checkpoint() -> str | None:
    """The newest checkpoint `make demo` trained, if it has run here."""
    found = sorted(Path().glob(DEMO_CHECKPOINTS), key=lambda path: path.stat().st_mtime)
    return str(found[-1]) if found else None


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent through fork and exec, so every worker would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed(run: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_model_files(variant: str, folder: Path) -> dict[str, Path]:
    """A checkpoint, its fp32 ONNX and its int8 ONNX (calibrated on a few studio photos)."""
    from cutout.data.io import read_photos
    from cutout.data.synth import generate_pair
    from cutout.model import build_model, save_checkpoint
    from cutout.model.export import export_onnx, quantize_int8

    model = build_model(variant)
    files = {"checkpoint": folder / f"{variant}.pt", "fp32": folder / f"{variant}.onnx"}
    save_checkpoint(files["checkpoint"], model, variant)
    export_onnx(model, files["fp32"])
    calibration = folder / "calibration"
    calibration.mkdir(exist_ok=True)
    for index in range(8):
        generate_pair(index, size=(400, 600), seed=3)[0].save(calibration / f"{index}.jpg")
    files["int8"] = folder / f"{variant}-int8.onnx"
    quantize_int8(files["fp32"], files["int8"], read_photos(str(calibration)))
    return files


def network_ms(files: dict[str, str], backend: str, batch: int, repeats: int) -> tuple[float, float]:
    """ms per image of the network alone at 320×320, and the process's peak RSS (MiB)."""
    import torch

    from cutout.model import load_weights
    from cutout.model.inference import OnnxPredictor, TorchPredictor

    inputs = np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    if backend in ("eager", "channels_last"):
        torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
        model = load_weights(files["checkpoint"])
        if backend == "channels_last":
            run = lambda: TorchPredictor(model).predict(inputs)  # noqa: E731
        else:
            tensor = torch.from_numpy(inputs)

            def run() -> object:
                with torch.inference_mode():
                    return model(tensor)[0]
    else:
        predictor = OnnxPredictor(files[backend])
        run = lambda: predictor.predict(inputs)  # noqa: E731
    return timed(run, repeats) / batch * 1000, peak_rss_mib()


def remove_ms(model_file: str, photo_dir: str, batch: int) -> tuple[float, float]:
    """ms per photo of `cutout remove`'s library path, decode to written PNG, and peak RSS (MiB)."""
    from cutout.model.loader import load_predictor
    from cutout.remove import RemoveOptions, collect_inputs, remove_backgrounds

    predictor = load_predictor(model_file)
    photos, _ = collect_inputs([photo_dir])
    with tempfile.TemporaryDirectory() as out:
        remove_backgrounds(photos[:batch], out, predictor, RemoveOptions(batch_size=batch))  # warm-up
        start = time.perf_counter()
        summary = remove_backgrounds(photos, out, predictor, RemoveOptions(batch_size=batch))
        elapsed = time.perf_counter() - start
    assert summary.ok, summary.failures
    return elapsed / len(photos) * 1000, peak_rss_mib()


def in_subprocess(function: Callable, *args: object) -> tuple[float, float]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def trained_checkpoint(folder: Path, requested: str | None) -> str:
    """A trained U²-NetP: realistic masks matter end to end (PNG size, int8 agreement)."""
    from cutout.data.synth import synthesize_dataset

    for candidate in (requested, demo_checkpoint()):
        if candidate and Path(candidate).exists():
            return candidate
    print(
        "no trained model (run `make demo` first for the demo's): training a small one for 4 epochs...",
        flush=True,
    )
    synthesize_dataset(str(folder / "train"), 64, seed=0)
    synthesize_dataset(str(folder / "val"), 8, seed=1)
    training = [sys.executable, "-m", "cutout.train", str(folder / "train"), "--val-data",
                str(folder / "val"), "--model", "u2netp", "--epochs", "4", "--batch-size", "4",
                "--input-size", "160", "--crop", "144",
                "--checkpoint-dir", str(folder / "checkpoints"), "--no-tracking"]  # fmt: skip
    subprocess.run(training, check=True, cwd=folder)
    return str(folder / "checkpoints" / "last.pt")


def held_out_photos(folder: Path, count: int) -> Path:
    from cutout.data.synth import generate_pair

    folder.mkdir()
    for index in range(count):
        generate_pair(index, size=E2E_PHOTO, seed=7)[0].save(folder / f"{index:03d}.jpg", quality=92)
    return folder


def export_both(checkpoint: str, folder: Path, calibration: Path, input_size: int | None) -> dict[str, str]:
    """fp32 and int8 ONNX files of a checkpoint, run at `input_size` (None: the size it was trained at)."""
    from cutout.data.io import read_photos
    from cutout.model.export import export_model

    files = {
        "fp32": str(folder / f"e2e-{input_size}.onnx"),
        "int8": str(folder / f"e2e-{input_size}-int8.onnx"),
    }
    export_model(checkpoint, files["fp32"], input_size=input_size)
    photos = read_photos(str(calibration))
    export_model(checkpoint, files["int8"], calibration=photos, input_size=input_size)
    return files


def int8_agreement(files: dict[str, str], photo_dir: Path) -> float:
    """Mean IoU of the int8 model's masks with the fp32 model's, at full resolution."""
    from cutout.data.io import read_image
    from cutout.evaluate.metrics import mask_iou
    from cutout.model.inference import predict_probabilities
    from cutout.model.loader import load_predictor

    fp32, int8 = load_predictor(files["fp32"]), load_predictor(files["int8"])
    scores = []
    for photo in sorted(photo_dir.iterdir()):
        image = read_image(photo)
        a, b = (predict_probabilities(p, [image])[0] >= 0.5 for p in (fp32, int8))
        scores.append(mask_iou(a, b))
    return float(np.mean(scores))


def load_input_size(model_file: str) -> int:
    from cutout.model.loader import load_predictor

    return load_predictor(model_file).input_size


def row(variant: str, label: str, batch: int, ms: float, rss: float, note: str = "") -> None:
    print(f"{variant:8} {label:20} {batch:>5} {ms:>9.1f} {rss:>13.0f}  {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=["u2netp", "u2net"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos", type=int, default=24, help="1000×1500 JPEGs for the end-to-end run")
    parser.add_argument("--model", help="trained U²-NetP checkpoint for the end-to-end run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'model':8} {'back end':20} {'batch':>5} {'ms/image':>9} {'peak RSS MiB':>13}", flush=True)
        for variant in args.variants:
            files = {k: str(v) for k, v in make_model_files(variant, folder).items()}
            for backend in ("eager", "channels_last", "fp32", "int8"):
                for batch in (1, 8):
                    repeats = args.repeats if variant == "u2netp" or batch == 1 else max(2, args.repeats // 2)
                    ms, rss = in_subprocess(network_ms, files, backend, batch, repeats)
                    label = {"fp32": "onnxrt fp32", "int8": "onnxrt int8"}.get(backend, f"torch {backend}")
                    row(variant, label, batch, ms, rss, "network alone, 320×320")
        photo_dir = held_out_photos(folder / "photos", args.photos)
        checkpoint = trained_checkpoint(folder, args.model)
        for input_size in (None, SIZE):  # as trained, then at 320 (the published input size)
            files = {"checkpoint": checkpoint, **export_both(checkpoint, folder, photo_dir, input_size)}
            net = load_input_size(files["fp32"])
            for kind in ("checkpoint", "fp32", "int8") if input_size is None else ("fp32", "int8"):
                for batch in (1, 4):
                    ms, rss = in_subprocess(remove_ms, files[kind], str(photo_dir), batch)
                    row(
                        "u2netp",
                        f"remove {kind}",
                        batch,
                        ms,
                        rss,
                        f"end to end, {net} px net, 1000×1500 JPEG → PNG",
                    )
            print(f"int8 masks against fp32 masks at {net} px ({args.photos} photos): "
                  f"mean IoU {int8_agreement(files, photo_dir):.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
