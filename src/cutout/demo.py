"""`make demo`: the whole loop on the embedded default — no cluster, no cloud, nothing downloaded.

Everything runs as a user would run it, as `cutout` commands:

1. `cutout data synth`: a synthetic studio catalogue (photos with their true masks).
2. `cutout pipeline run --local`: the training pipeline with kfp.local — merge the feedback stores, clean,
   cluster, augment, train U²-NetP with two Horovod workers (low resolution, then 160 px), evaluate,
   register, calibrate the routing threshold, promote, and deploy (locally: the InferenceService's YAML).
3. `cutout remove` with `models:/cutout@champion` on full-resolution studio photos the model never saw,
   compared with their true masks on an HTML page.
4. `cutout serve local`: the champion behind the feedback transformer. The held-out photos go through it,
   and a few products photographed on a new, busy backdrop (the studio changed its backdrop): the model
   is unsure of those, so they go to the review queue; the confident ones to the retraining store.
5. `cutout review serve`: every queued item is corrected through the review API (reviewer `demo`) with
   its true mask, which the demo knows because it made the photos.
6. `cutout pipeline run --local` again, as the scheduled retraining runs: it fine-tunes the champion
   (`pretrained=models:/cutout@champion`) on the raw data plus the feedback stores (the merge step), and
   promotes the new version only if the gate lets it.

The MLflow store (`<workdir>/mlflow.db`, artifacts in `mlartifacts/`) survives a new run of the demo, so
a second run shows the promotion gate at work; everything else in the work folder is made afresh.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from rich.console import Console

from cutout.data.io import encode_image, mask_to_image, read_image
from cutout.data.manifest import read_jsonl
from cutout.data.synth import generate_pair
from cutout.evaluate.gallery import GalleryRow, write_gallery
from cutout.evaluate.metrics import mask_iou
from cutout.serve.local import start_local_service, terminate, wait_until_ready

console = Console()
STUDIO_SIZE = (1000, 1500)
HELD_OUT_SEED = 10_000  # the held-out products: a seed the training data never used
REVIEWER = "demo"
FRESH = ("raw", "kfp", "runs", "photos", "new-backdrop", "cutouts", "report", "feedback", "serving")
# What earlier versions of the demo made here, removed as well so the folder holds only this run's output.
FORMER = ("clean", "clustered", "augmented", "checkpoints", "tensorboard", "evaluation", "calibration",
          "run-low-resolution.json", "run-final.json")  # fmt: skip
FIRST_RUN, RETRAIN_RUN = "1-train", "2-retrain"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo makes and how long it trains; the defaults fit in 10 minutes on 2 cores."""

    pairs: int = 400  # raw synthetic catalogue photos, before cleaning
    photo_size: tuple[int, int] = (400, 600)
    clean_size: int = 320  # the clean step's square size
    copies: int = 2  # augmented variants per training pair
    # Progressive resizing: most epochs at a low resolution, where a step costs 2.8 times less than at
    # 160 px, then a short fine-tune at the resolution the model serves at. Measured on held-out studio
    # photos: 8 epochs at 96 px alone gave mean IoU 0.934; one more epoch at 160 px, 0.962. The pipeline's
    # demo: 6 epochs at 96 px took 1,079 s on 2 busy cores (0.963); 4 epochs, 561 s on quiet ones (0.955).
    epochs: int = 4  # at input_size; 0: no low-resolution stage
    input_size: int = 96
    finish_epochs: int = 1
    finish_size: int = 160
    batch_size: int = 8
    lr: float = 2e-3
    finish_lr: float = 5e-4
    workers: int = 2
    held_out: int = 16  # full-resolution photos cut out with the champion
    served: int = 16  # of those, photos sent through the local KServe servers
    new_backdrop: int = 2  # more held-out products, on a backdrop the model never saw, sent through them too
    threshold: float = -1.0  # the routing threshold; negative: the champion's calibrated one
    # The retraining run fine-tunes the champion: one epoch at finish_size, no augmented copies (the cluster
    # balancing still evens out the product types), so that it stays short.
    retrain_epochs: int = 1
    retrain_copies: int = 0
    retrain_lr: float = 5e-4


@dataclass
class PipelineRun:
    """What one local pipeline run left: its folder, the MLflow run, the registered version and the gate."""

    folder: Path
    run_id: str
    version: str
    mean_iou: float
    promoted: bool
    reason: str
    threshold: float | None
    pretrained: str


@dataclass
class DemoResult:
    """What the demo did, for the tests and the closing summary."""

    mean_iou: float = 0.0  # the champion's cutouts of the held-out photos against their true masks
    first: PipelineRun | None = None
    retrain: PipelineRun | None = None
    routed: dict[str, str] = field(default_factory=dict)  # photo → "review" or "retrain"
    corrected: dict[str, int] = field(default_factory=dict)  # photo → pixels changed by the reviewer
    merged: dict[str, int] = field(default_factory=dict)  # pairs kept per source by the merge step
    corrected_in_merged: dict[str, str] = field(default_factory=dict)  # photo → its split in the retraining
    seconds: dict[str, float] = field(default_factory=dict)


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _run_cli(*args: str, env: dict[str, str], capture: bool = False, log: Path | None = None) -> str:
    """Run a `cutout` command as a user would, showing it first; returns its output when `capture`.

    With `log`, the whole output goes to that file and only what is worth reading to the screen (see
    `_worth_reading`). The demo stops on a failed command: any non-zero status of `cutout pipeline`,
    over 1 for the others (1: some inputs failed, which the command reports itself).
    """
    command = [sys.executable, "-m", "cutout.cli", *args]
    console.print(f"$ cutout {' '.join(args)}", style="cyan", highlight=False, soft_wrap=True)
    if log is None:
        completed = subprocess.run(command, check=False, env=env, text=True, capture_output=capture)
        status, output, errors = completed.returncode, completed.stdout or "", completed.stderr or ""
        if capture:
            console.print(output, end="", highlight=False)
    else:
        status, output, errors = _run_logged(command, env, log), "", f"(the whole output: {log})"
    if status not in ((0,) if args[0] == "pipeline" else (0, 1)):
        raise SystemExit(f"cutout {' '.join(args[:2])} failed with status {status}:\n{errors}")
    return output


_KFP_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - \w+ - ")
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_RANK = re.compile(r"\[\d+\]<stdout>:")


def _run_logged(command: list[str], env: dict[str, str], log: Path) -> int:
    """Run `command` with its output saved to `log`; show the lines worth reading; return its status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log, "w", encoding="utf-8") as saved,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as process,
    ):
        in_outputs = False
        for raw in process.stdout:
            saved.write(raw)
            line = _RANK.sub("", _COLOUR.sub("", raw.rstrip()))
            if _KFP_LINE.match(line):
                in_outputs = line.endswith("outputs:")  # KFP's dump of the task's artifacts follows
            if _worth_reading(line, in_outputs):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
    if process.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        console.print("\n".join(_COLOUR.sub("", line) for line in tail), markup=False, highlight=False)
    return process.returncode


def _worth_reading(line: str, in_outputs: bool) -> bool:
    """A task's start and end, and what our steps print; not KFP's executor input and output dumps."""
    text = line.strip()
    if _KFP_LINE.match(line):
        return "Executing task" in line or "finished with status" in line
    return not (in_outputs or not text or "KFP Executor" in text or text[0] in '{}[]"' or set(text) == {"-"}
                or "Warning" in text or "<stderr>" in text)  # fmt: skip


@contextmanager
def _timed(result: DemoResult, part: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        result.seconds[part] = time.perf_counter() - started


# --- photos the model never saw -------------------------------------------------------------------


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


def busy_backdrop(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A bold checked backdrop in two random colours (H×W×3 uint8), nothing like the studio's plain one.

    Checks of 12-20% of the width: on the demo's model, products on them got quality scores of 0.1-0.7
    (on the studio backdrop 0.85-0.95), so they go to review.
    """
    width, height = size
    cell = int(width * rng.uniform(0.12, 0.2))
    rows, columns = np.mgrid[0:height, 0:width]
    checks = (((rows // cell) + (columns // cell)) % 2).astype(bool)[..., None]
    first, second = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return np.where(checks, first, second).astype(np.uint8)


def on_new_backdrop(photo: Image.Image, mask: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The product of a studio photo, cut out with its true mask, on a `busy_backdrop`."""
    # A slightly soft edge, as a real photo has, so that the product does not look pasted on.
    edge = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1.2))
    alpha = np.asarray(edge, dtype=np.float32)[..., None] / 255.0
    pixels = np.asarray(photo.convert("RGB"), dtype=np.float32) * alpha
    backdrop = busy_backdrop(photo.size, rng)
    return Image.fromarray((pixels + backdrop * (1.0 - alpha)).round().astype(np.uint8))


def _new_backdrop_photos(folder: Path, count: int, first_index: int, seed: int) -> dict[str, np.ndarray]:
    """More held-out products, photographed on the studio's new, busy backdrop; with their true masks."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truths = {}
    for index in range(first_index, first_index + count):
        photo, mask, product_type = generate_pair(index, size=STUDIO_SIZE, seed=seed)
        name = f"new-backdrop-{index:02d}-{product_type}"
        on_new_backdrop(photo, mask, rng).save(folder / f"{name}.jpg", quality=92)
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


# --- the work folder, MLflow ------------------------------------------------------------------------


def _fresh_workdir(workdir: Path) -> None:
    """Remove what an earlier demo made here, except the MLflow store (its registry history)."""
    for name in FRESH + FORMER:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)


def _environment(workdir: Path) -> dict[str, str]:
    # The demo's own MLflow store: a sqlite file with its artifacts beside it. No review token: the review
    # server listens on 127.0.0.1 only, where it needs none.
    env = {key: value for key, value in os.environ.items() if key != "CUTOUT_REVIEW_TOKEN"}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir.absolute() / 'mlflow.db'}"}


def _mlflow(env: dict[str, str]):
    from mlflow.tracking import MlflowClient

    return MlflowClient(env["MLFLOW_TRACKING_URI"])


# --- the pipeline -----------------------------------------------------------------------------------


def _pipeline_params(w: Path, s: DemoSettings, label: str, **overrides: object) -> dict[str, object]:
    """Today's recipe as pipeline parameters (see `cutout pipeline params`), with `overrides`."""
    params = {"data_uri": w / "raw", "feedback_uri": w / "feedback", "work_uri": w / "runs" / label,
              "model_variant": "u2netp", "clean_size": s.clean_size, "val_fraction": 0.15,
              "augment_copies": s.copies, "low_res_epochs": s.epochs, "low_res_size": s.input_size,
              "low_res_lr": s.lr, "epochs": s.finish_epochs, "input_size": s.finish_size,
              "crop": s.finish_size, "lr": s.finish_lr, "warmup_epochs": 0.1, "batch_size": s.batch_size,
              "workers": s.workers, "pretrained": ""}  # fmt: skip
    # The demo still trains its first model from scratch on the studio catalogue (the pipeline's default
    # is now the official u2netp): starting it from the official weights is the next step (issue 15, item 7).
    return {**params, **overrides}


def _run_pipeline(w: Path, params: dict[str, object], env: dict[str, str]) -> PipelineRun:
    """`cutout pipeline run --local`; what it registered and whether the gate promoted it."""
    flags = [x for name, value in params.items() for x in ("-p", f"{name}={value}")]
    work = Path(str(params["work_uri"]))
    _run_cli("pipeline", "run", "--local", "--pipeline-root", str(w / "kfp"), *flags, env=env,
             log=work.with_name(f"{work.name}.log"))  # fmt: skip
    (folder,) = work.iterdir()  # the run's folder, named by its KFP run id
    final = json.loads((folder / "training" / "run-final.json").read_text())
    client = _mlflow(env)
    (found,) = client.search_model_versions(f"run_id = '{final['run_id']}'")
    version = client.get_model_version(found.name, found.version)
    tags = version.tags
    threshold = tags.get("routing_threshold")
    return PipelineRun(folder, final["run_id"], str(version.version), float(tags["mean_iou"]),
                       tags.get("promotion.promoted") == "True", tags.get("promotion.reason", ""),
                       float(threshold) if threshold else None,
                       client.get_run(final["run_id"]).data.params.get("pretrained", ""))  # fmt: skip


def _say_registered(run: PipelineRun) -> None:
    outcome = "[green]promoted to champion[/green]" if run.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"version {run.version} registered (mean IoU {run.mean_iou:.4f} on the held-out split): "
                  f"{outcome} — {run.reason}", highlight=False)  # fmt: skip
    if run.threshold is not None:
        console.print(f"its calibrated routing threshold: {run.threshold:.3f}", highlight=False)
    console.print(f"run folder (datasets, reports, outcome.json): {run.folder}", highlight=False)


# --- serving and review -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ask_for_cutout(url: str, photo: Path) -> dict:
    """One v1 request, as a catalogue system sends it; the photo's name travels as the request id."""
    body = json.dumps({"instances": [{"image_b64": base64.b64encode(photo.read_bytes()).decode()}]}).encode()
    headers = {"Content-Type": "application/json", "X-Request-Id": photo.stem}
    request = urllib.request.Request(f"{url}/v1/models/cutout:predict", body, headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _champion(env: dict[str, str]) -> tuple[str, float | None]:
    """The champion's version and its calibrated routing threshold (None if it has none)."""
    champion = _mlflow(env).get_model_version_by_alias("cutout", "champion")
    threshold = champion.tags.get("routing_threshold")
    return str(champion.version), float(threshold) if threshold else None


def _destinations(feedback: Path) -> dict[str, str]:
    """Where the transformer put each photo, by request id (the photo's name): `retrain` or `review`."""
    found, patterns = {}, {"retrain": "retrain/auto/records/*.json", "review": "review/pending/*/item.json"}
    for kind, pattern in patterns.items():
        for path in feedback.glob(pattern):
            found[json.loads(path.read_text()).get("request_id", path.stem)] = kind
    return found


def _serve(w: Path, photos: list[Path], s: DemoSettings, env: dict[str, str]) -> dict[str, str]:
    """Predictor and feedback transformer on 127.0.0.1 (`cutout serve local`); send photos through them.

    Returns:
        Where each photo went, as the stores say: `retrain` (score at or above the threshold) or `review`.
    """
    feedback, port = w / "feedback", _free_port()
    version, calibrated = _champion(env)
    fixed = s.threshold >= 0
    option = f" --threshold {s.threshold}" if fixed else ""
    console.print(f"$ cutout serve local --feedback-uri {feedback} --port {port}{option}", style="cyan",
                  highlight=False)  # fmt: skip
    if fixed:
        console.print(f"champion: version {version}; fixed routing threshold {s.threshold}", highlight=False)
    elif calibrated is not None:
        console.print(f"champion: version {version}; routing threshold {calibrated:.3f} (calibrated on its "
                      "held-out split)", highlight=False)  # fmt: skip
    scores = {}
    # `env` points the servers at the demo's MLflow store, where they find the champion and its threshold.
    with start_local_service(feedback_uri=str(feedback), port=port, predictor_port=_free_port(),
                             threshold=s.threshold if fixed else None, log_dir=w / "serving",
                             env=env):  # fmt: skip
        for photo in photos:
            scores[photo.stem] = _ask_for_cutout(f"http://127.0.0.1:{port}", photo)["predictions"][0]["score"]
    # Stopped: the transformer has written everything it routed.
    routed = _destinations(feedback)
    names = {"review": "[yellow]review queue[/yellow]", "retrain": "retraining store"}
    for name, score in scores.items():
        console.print(f"{name:40} score {score:.3f} → {names.get(routed.get(name, ''), 'not stored')}",
                      highlight=False)  # fmt: skip
    counts = [sum(1 for where in routed.values() if where == kind) for kind in ("retrain", "review")]
    console.print(f"routed: {counts[0]} to the retraining store, {counts[1]} to the review queue")
    return routed


def _http(url: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
    request = urllib.request.Request(url, data, headers or {}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


@contextmanager
def _review_server(w: Path, env: dict[str, str]):
    """`cutout review serve` on a free 127.0.0.1 port, as its own process; yields its URL."""
    port = _free_port()
    args = ["review", "serve", "--feedback-uri", str(w / "feedback"), "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip
    console.print(f"$ cutout {' '.join(args)} &", style="cyan", highlight=False)
    (w / "serving").mkdir(parents=True, exist_ok=True)
    with open(w / "serving" / "review.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "cutout.cli", *args], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url, process, time.monotonic() + 120, "review server", path="/healthz")
            yield url
        finally:
            terminate(process, 30)


def _review(w: Path, photos: dict[str, Path], truths: dict[str, np.ndarray], env: dict[str, str]) -> dict:
    """Correct every pending item through the review API with its photo's true mask.

    Returns:
        Pixels changed by the reviewer, per photo.
    """
    by_digest = {hashlib.sha256(path.read_bytes()).hexdigest(): name for name, path in photos.items()}
    corrected = {}
    with _review_server(w, env) as url:
        items = json.loads(_http(f"{url}/api/items"))["items"]
        console.print(f"GET /api/items: {len(items)} pending, lowest score first")
        for item in items:
            opened = json.loads(_http(f"{url}/api/items/{item['id']}", headers={"X-Reviewer": REVIEWER}))
            # Which photo it is: the API hands the photo back as the client sent it.
            name = by_digest.get(hashlib.sha256(_http(f"{url}/api/items/{item['id']}/photo")).hexdigest())
            if name is None:  # not one of ours (the feedback folder is the demo's own, so unexpected)
                console.print(f"item {item['id']}: not a photo the demo sent; left in the queue")
                continue
            mask = encode_image(mask_to_image(truths[name]), "PNG")
            saved = json.loads(_http(f"{url}/api/items/{item['id']}/save?version={opened['version']}", mask,
                                     {"X-Reviewer": REVIEWER, "Content-Type": "image/png"}))  # fmt: skip
            record = saved["record"]
            corrected[name] = int(record.get("changed_pixels") or 0)
            share = record.get("changed_share") or 0.0
            console.print(f"POST /api/items/{item['id']}/save ({name}, score {item['score']:.3f}): "
                          f"the true mask, {corrected[name]} pixels changed ({share:.1%})",
                          highlight=False)  # fmt: skip
    return corrected


def _no_review(routed: dict[str, str]) -> None:
    console.print(
        "[yellow]No photo went to the review queue[/yellow]: every quality score reached the routing "
        "threshold. The score measures how sure the network is of its own mask, not whether the mask is "
        "right: this champion was sure even of the new-backdrop photos (a crisp, wrong mask looks sure), "
        "so nobody had anything to correct, and the retraining below learns from the "
        f"{len(routed)} auto-accepted pairs only.",
        highlight=False,
    )


# --- what the retraining run used --------------------------------------------------------------------


def _merged_feedback(run: PipelineRun) -> tuple[dict[str, int], dict[str, str]]:
    """Pairs kept per source by the merge step; each corrected photo's split in the training data (`train`
    or `val`), or why a later step dropped it."""
    summary = json.loads((run.folder / "merged" / "summary.json").read_text())
    corrected = {record["id"]: record.get("request_id", record["id"])
                 for record in read_jsonl(str(run.folder / "merged" / "manifest.jsonl"))
                 if record["id"].startswith("corrected-")}  # fmt: skip
    fates = {}
    for step in ("clean", "clustered"):
        rejects = run.folder / step / "rejects.jsonl"
        for record in read_jsonl(str(rejects)) if rejects.exists() else []:
            fates[record["id"]] = f"dropped by {step}: {record.get('reason')} ({record.get('message')})"
    for record in read_jsonl(str(run.folder / "clustered" / "manifest.jsonl")):
        fates[record["id"]] = record.get("split", "train")
    return summary["kept"], {photo: fates.get(pair, "missing") for pair, photo in corrected.items()}


def _say_merged(kept: dict[str, int], corrected: dict[str, str], reviewed: dict[str, int]) -> None:
    console.print(f"the merge step's dataset: {kept.get('raw', 0)} raw, {kept.get('corrected', 0)} corrected "
                  f"and {kept.get('auto', 0)} auto-accepted pairs", highlight=False)  # fmt: skip
    uses = {"train": "split train: trained on", "val": "split val: held out for evaluation, not trained on"}
    for photo, fate in corrected.items():
        console.print(f"  corrected pair {photo}: {uses.get(fate, fate)}", highlight=False)
    missing = sorted(set(reviewed) - set(corrected))
    if missing:
        console.print(f"[red]corrected photos missing from the merged data: {', '.join(missing)}[/red]")


# --- the demo -----------------------------------------------------------------------------------------


def _first_run(w: Path, s: DemoSettings, env: dict[str, str]) -> PipelineRun:
    low = f"{s.epochs} epochs at {s.input_size} px, then " if s.epochs else ""
    _step(f"2. Training pipeline (kfp.local): merge, clean, cluster, augment; train U²-NetP with "
          f"{s.workers} Horovod workers ({low}{s.finish_epochs} at {s.finish_size} px); evaluate, register, "
          "promote")  # fmt: skip
    run = _run_pipeline(w, _pipeline_params(w, s, FIRST_RUN), env)
    _say_registered(run)
    return run


def _retrain(w: Path, s: DemoSettings, env: dict[str, str], result: DemoResult) -> None:
    _step(f"6. Retrain (kfp.local): fine-tune the champion on raw + feedback, {s.retrain_epochs} epoch at "
          f"{s.finish_size} px")  # fmt: skip
    params = _pipeline_params(w, s, RETRAIN_RUN, pretrained="models:/cutout@champion", low_res_epochs=0,
                              epochs=s.retrain_epochs, augment_copies=s.retrain_copies,
                              lr=s.retrain_lr)  # fmt: skip
    run = result.retrain = _run_pipeline(w, params, env)
    result.merged, result.corrected_in_merged = _merged_feedback(run)
    _say_merged(result.merged, result.corrected_in_merged, result.corrected)
    console.print(f"fine-tuned from {run.pretrained} (the champion when the run started)", highlight=False)
    _say_registered(run)  # the gate scored it and the champion on the same photos, synthetic and real


def _say_results(w: Path, result: DemoResult, env: dict[str, str], started: float) -> None:
    _step("Results")
    console.print(f"mean IoU of the champion's held-out cutouts: [bold]{result.mean_iou:.3f}[/bold]")
    for label, run in (("first run", result.first), ("retraining", result.retrain)):
        if run is not None:
            verdict = "promoted" if run.promoted else f"not promoted ({run.reason})"
            console.print(f"{label:11} version {run.version}, mean IoU {run.mean_iou:.4f}: {verdict}",
                          highlight=False)  # fmt: skip
    console.print(f"review: {len(result.corrected)} of {len(result.routed)} served photos corrected; "
                  f"{len(result.corrected_in_merged)} corrected pairs in the retraining data",
                  highlight=False)  # fmt: skip
    store = env["MLFLOW_TRACKING_URI"]
    console.print(f"cutouts vs truth:  {w / 'report' / 'index.html'}\n"
                  f"pipeline runs:     {w / 'runs'} (evaluation/, calibration/, deploy/ in each)\n"
                  f"feedback store:    {w / 'feedback'} (retrain/auto, retrain/corrected, review/)\n"
                  f"MLflow store:      {store}\n  look at it with: mlflow ui --backend-store-uri {store}",
                  highlight=False)  # fmt: skip
    result.seconds["total"] = time.perf_counter() - started
    console.print("time: " + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in result.seconds.items()))


def run_demo(workdir: Path, settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Run every step of the demo inside `workdir`, print where the results are and how long each took."""
    started, s, w, result = time.perf_counter(), settings, workdir, DemoResult()
    _fresh_workdir(w)
    env = _environment(w)
    with _timed(result, "data"):
        _step(f"1. Data: synthesise {s.pairs} studio photos")
        _run_cli("data", "synth", str(w / "raw"), "--count", str(s.pairs), "--size", str(s.photo_size[0]),
                 str(s.photo_size[1]), env=env)  # fmt: skip
    with _timed(result, "first pipeline run"):
        result.first = _first_run(w, s, env)

    with _timed(result, "remove"):
        _step(f"3. Cut out {s.held_out} held-out {STUDIO_SIZE[0]}×{STUDIO_SIZE[1]} studio photos")
        photos, cutouts = w / "photos", w / "cutouts"
        truths = _held_out_photos(photos, s.held_out, seed=HELD_OUT_SEED)
        _run_cli("remove", str(photos), "-o", str(cutouts), "--model", "models:/cutout@champion", env=env)
        page, result.mean_iou = _report(photos, cutouts, truths, w / "report")
        console.print(f"mean IoU {result.mean_iou:.3f}; page: {page}")

    with _timed(result, "serve"):
        _step("4. Serve the champion; the studio changed its backdrop for a few new photos")
        truths |= _new_backdrop_photos(w / "new-backdrop", s.new_backdrop, s.held_out, seed=HELD_OUT_SEED)
        sent = sorted(photos.glob("*.jpg"))[: s.served] + sorted((w / "new-backdrop").glob("*.jpg"))
        result.routed = _serve(w, sent, s, env)

    with _timed(result, "review"):
        _step("5. Review: correct the doubtful cutouts through the review API")
        if any(where == "review" for where in result.routed.values()):
            result.corrected = _review(w, {path.stem: path for path in sent}, truths, env)
        else:
            _no_review(result.routed)

    with _timed(result, "retraining run"):
        _retrain(w, s, env, result)
    _say_results(w, result, env, started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".cutout/demo"))
    defaults = DemoSettings()
    for setting in fields(DemoSettings):
        if setting.name != "photo_size":
            default = getattr(defaults, setting.name)
            parser.add_argument(f"--{setting.name.replace('_', '-')}", type=type(default), default=default)
    args = vars(parser.parse_args())
    workdir = args.pop("workdir")
    run_demo(workdir, DemoSettings(**args))


if __name__ == "__main__":
    main()
