"""`make demo`: the whole loop on the embedded default — no cluster, no cloud, nothing downloaded.

Everything runs as a user would run it, as `cutout` commands:

1. Data: `cutout data synth` makes a studio catalogue (photos with their true masks); half of the real
   street-fashion photos cutout ships join it (the catalogue's real part), the other half is kept apart
   as the real-photo holdout nothing trains on.
2. The registry starts from the official pretrained U²-NetP: `cutout register --model u2netp`, its routing
   threshold calibrated on studio photos (`cutout calibrate-threshold`), `cutout promote`: the champion.
3. `cutout remove` with `models:/cutout@champion` on full-resolution studio photos it never saw and on real
   photos from the holdout, compared with their true masks on an HTML page.
4. `cutout serve local`: the champion behind the feedback transformer. Held-out studio photos go through
   it, and products photographed on the studio's new backdrop (a bold check, see `cutout data synth
   --backdrop checks`): the official model is weak there and unsure of its worst masks, so those go to
   the review queue; the confident cutouts to the retraining store.
5. `cutout review serve`: every queued item is corrected through the review API (reviewer `demo`) with
   its true mask, which the demo knows because it made the photos.
6. `cutout pipeline run --local`, as the scheduled retraining runs: merge (catalogue + feedback), clean,
   cluster, augment, fine-tune the champion with two Horovod workers, evaluate, register, calibrate, and
   the gate: the candidate and the champion scored photo by photo on the `val` split, the real-photo
   holdout and more new-backdrop photos nobody served; promoted only when better beyond the holdouts'
   noise and not worse on real photos, otherwise refused with the intervals shown.
7. Before and after: the new-backdrop holdout cut out by the first champion and by the new version, on
   the same page.

The work folder is made afresh on every run. The registry is the one every `cutout` command reads by
default (`.cutout/mlflow.db` of the current directory), so the README's commands work on it afterwards; it
starts empty too, and a registry that was there before is moved aside, never deleted.
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
from PIL import Image
from rich.console import Console

from cutout.data.feedback_store import AUTO, record_files, store_uri
from cutout.data.gallery import GalleryRow, GallerySection, write_sections
from cutout.data.io import encode_image, mask_to_image, read_image, read_mask
from cutout.data.manifest import copy_pairs, read_jsonl, read_manifest
from cutout.data.real import REAL_PHOTOS
from cutout.data.synth import generate_pair
from cutout.evaluate.metrics import mask_iou
from cutout.pipeline.steps import FINAL, RUN_INFO, TRAINING_FOLDER
from cutout.platform import storage
from cutout.platform.names import (
    CALIBRATED,
    CHAMPION_URI,
    MODEL_NAME,
    ROUTING_THRESHOLD_TAG,
    given_threshold,
    version_uri,
)
from cutout.platform.registry import promotion_tags
from cutout.platform.tracking import local_dir, local_tracking_uri, set_aside_local_store
from cutout.serve.codec import v1_predict_path
from cutout.serve.feedback import RETRAIN, REVIEW, list_pending
from cutout.serve.local import start_local_service, terminate, wait_until_ready

console = Console(soft_wrap=True)  # whole lines: paths and figures stay readable at any width
STUDIO_SIZE = (1000, 1500)
HELD_OUT_SEED = 10_000  # the held-out products: a seed the training data never used
CALIBRATION_SEED = 20_000
NEW_BACKDROP_SEED = 30_000  # the served new-backdrop products; the holdout's come from the next seed
NEW_BACKDROP_DOMAIN = "new-backdrop"
REVIEWER = "demo"
FRESH = ("raw", "studio", "real-holdout", "calibration", "new-backdrop-holdout", "kfp", "runs", "photos",
         "real-photos", "new-backdrop", "cutouts", "report", "feedback", "serving",
         "calibration-report")  # fmt: skip
# What earlier versions of the demo made here, removed as well so the folder holds only this run's output.
FORMER = ("clean", "clustered", "augmented", "checkpoints", "tensorboard", "evaluation", "mlflow.db",
          "mlartifacts", "run-low-resolution.json", "run-final.json")  # fmt: skip
RETRAIN_RUN = "retrain"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo makes and how long it trains; the defaults fit in 10 minutes on 2 cores."""

    start_from: str = "u2netp"  # the built-in model the registry starts from
    pairs: int = 80  # the studio catalogue's synthetic photos
    photo_size: tuple[int, int] = (400, 600)
    real_photos: int = 100  # shipped real photos in the catalogue; the next `real_holdout` are the holdout
    real_holdout: int = 100
    calibration_pairs: int = 40  # studio photos the first champion's routing threshold is chosen on
    clean_size: int = 320  # the clean step's square size
    copies: int = 0  # augmented variants per training pair
    # Fine-tuning the official weights: one epoch at the size they were trained at, batch norm frozen
    # (cutout.train.batchnorm), Adam at 1e-5 per worker. Every rate tried teaches the new backdrop and loses
    # a little on real photos (docs/benchmarks.md), so the gate keeps the champion: the story is the gate.
    epochs: int = 1
    input_size: int = 320
    crop: int = 288
    batch_size: int = 8
    lr: float = 1e-5  # per worker: Horovod scales it by the workers
    workers: int = 2
    held_out: int = 12  # full-resolution studio photos cut out with the champion
    real_shown: int = 4  # real-holdout photos cut out with it
    served: int = 12  # of the held-out studio photos, those sent through the local KServe servers
    new_backdrop: int = 24  # products on the studio's new backdrop, sent through them too
    new_backdrop_holdout: int = 16  # more, never served: where the gate measures what the corrections taught
    threshold: float = CALIBRATED  # the routing threshold; CALIBRATED (negative): the champion's own


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
    intervals: dict[str, str] = field(default_factory=dict)  # domain → the gate's interval, as recorded


@dataclass
class DemoResult:
    """What the demo did, for the tests and the closing summary."""

    first_version: str = ""  # the built-in model, registered and made champion
    first_threshold: float | None = None
    mean_iou: float = 0.0  # the first champion's cutouts of the held-out studio photos against their masks
    real_iou: float = 0.0  # and of the real photos shown
    retrain: PipelineRun | None = None
    before_after: dict[str, float] = field(default_factory=dict)  # version → mean IoU, new-backdrop holdout
    routed: dict[str, str] = field(default_factory=dict)  # photo → "review" or "retrain"
    corrected: dict[str, int] = field(default_factory=dict)  # photo → pixels changed by the reviewer
    merged: dict[str, int] = field(default_factory=dict)  # pairs kept per source by the merge step
    corrected_in_merged: dict[str, str] = field(default_factory=dict)  # photo → its split in the retraining
    report: str = ""
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


# --- the data ----------------------------------------------------------------------------------------


def _make_data(w: Path, s: DemoSettings, env: dict[str, str]) -> None:
    """The catalogue (studio photos + half the shipped real ones), the real holdout, the calibration
    photos and the new-backdrop holdout, each a dataset made with `cutout data synth` or copied."""
    size = [str(s.photo_size[0]), str(s.photo_size[1])]
    _run_cli("data", "synth", str(w / "studio"), "--count", str(s.pairs), "--size", *size, env=env)
    real = list(read_manifest(str(REAL_PHOTOS)))[: s.real_photos + s.real_holdout]
    copy_pairs(str(w / "raw"), [(str(w / "studio"), read_manifest(str(w / "studio"))),
                                (str(REAL_PHOTOS), real[: s.real_photos])])  # fmt: skip
    copy_pairs(str(w / "real-holdout"), [(str(REAL_PHOTOS), real[s.real_photos :])])
    console.print(f"catalogue {w / 'raw'}: {s.pairs} studio photos and {min(len(real), s.real_photos)} of "
                  f"the real photos cutout ships; the other {len(real[s.real_photos :])} are the real "
                  f"holdout ({w / 'real-holdout'}), never trained on", highlight=False)  # fmt: skip
    _run_cli("data", "synth", str(w / "calibration"), "--count", str(s.calibration_pairs), "--size", *size,
             "--seed", str(CALIBRATION_SEED), env=env)  # fmt: skip
    _run_cli("data", "synth", str(w / "new-backdrop-holdout"), "--count", str(s.new_backdrop_holdout),
             "--size", *size, "--seed", str(NEW_BACKDROP_SEED + 1), "--backdrop", "checks",
             "--domain", NEW_BACKDROP_DOMAIN, env=env)  # fmt: skip


def _held_out_photos(folder: Path, count: int, seed: int, backdrop: str = "studio") -> dict[str, np.ndarray]:
    """Full-resolution photos the model never saw, on the studio sweep or another `backdrop`; true masks."""
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for index in range(count):
        photo, mask, product_type = generate_pair(index, size=STUDIO_SIZE, seed=seed, backdrop=backdrop)
        name = (
            f"{index:02d}-{product_type}"
            if backdrop == "studio"
            else f"{backdrop}-{index:02d}-{product_type}"
        )
        photo.save(folder / f"{name}.jpg", quality=92)
        truths[name] = mask
    return truths


def _real_photos(w: Path, count: int) -> dict[str, np.ndarray]:
    """The first `count` photos of the real holdout, copied out to be cut out; their true masks."""
    folder, truths = w / "real-photos", {}
    folder.mkdir(parents=True, exist_ok=True)
    for record in list(read_manifest(str(w / "real-holdout")))[:count]:
        shutil.copy(w / "real-holdout" / record["image"], folder / Path(record["image"]).name)
        truths[record["id"]] = read_mask(str(w / "real-holdout" / record["mask"]))
    return truths


def _cutout_rows(
    photos: Path, cutouts: Path, truths: dict[str, np.ndarray]
) -> tuple[list[GalleryRow], float]:
    """Each photo, its true and predicted masks and the cutout, captioned with its IoU; the mean IoU."""
    rows, scores = [], []
    for name, truth in truths.items():
        (photo,) = photos.glob(f"{name}.*")
        cutout = Image.open(cutouts / f"{name}.png")
        alpha = np.asarray(cutout.getchannel("A"))
        scores.append(mask_iou(alpha >= 128, truth))
        images = {"photo": read_image(photo), "true mask": mask_to_image(truth),
                  "predicted mask": Image.fromarray(alpha), "cutout": cutout}  # fmt: skip
        rows.append(GalleryRow(f"{name}  IoU {scores[-1]:.3f}", images))
    return rows, float(np.mean(scores))


def _before_after(
    w: Path, versions: list[str], env: dict[str, str]
) -> tuple[list[GalleryRow], dict[str, float]]:
    """The new-backdrop holdout cut out by each version: rows of masks side by side; mean IoU per version."""
    data = w / "new-backdrop-holdout"
    records = list(read_manifest(str(data)))
    masks: dict[str, dict[str, np.ndarray]] = {}
    for version in versions:
        out = w / "cutouts" / f"new-backdrop-v{version}"
        _run_cli("remove", str(data / "images"), "-o", str(out), "--model", version_uri(version),
                 "--mask-only", env=env)  # fmt: skip
        masks[version] = {r["id"]: np.asarray(Image.open(out / f"{r['id']}.png")) >= 128 for r in records}
    rows = []
    truths = {r["id"]: read_mask(str(data / r["mask"])) for r in records}
    ious = {v: {i: mask_iou(masks[v][i], truth) for i, truth in truths.items()} for v in versions}
    for record in records:
        images = {
            "photo": read_image(str(data / record["image"])),
            "true mask": mask_to_image(truths[record["id"]]),
        }
        images |= {f"version {v}": mask_to_image(masks[v][record["id"]]) for v in versions}
        scores = ", ".join(f"v{v} {ious[v][record['id']]:.3f}" for v in versions)
        rows.append(GalleryRow(f"{record['id']}  IoU {scores}", images))
    means = {v: float(np.mean(list(ious[v].values()))) for v in versions}
    return rows, means


# --- the work folder, MLflow ------------------------------------------------------------------------


def _fresh_workdir(workdir: Path) -> None:
    """Remove what an earlier demo made here, its MLflow store included: the story starts from scratch."""
    for name in FRESH + FORMER:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)


def _fresh_registry(root: Path) -> None:
    aside = set_aside_local_store(root)
    if aside is not None:
        console.print(f"the registry that was in {local_dir(root)} is now in {aside} (its artifacts' paths "
                      "point back there: move both back to use it again)", highlight=False)  # fmt: skip


def _environment(root: Path) -> dict[str, str]:
    # The registry every command reads without MLFLOW_TRACKING_URI: what the demo leaves, the README's
    # commands find. No review token: the review server listens on 127.0.0.1 only, where it needs none.
    env = {key: value for key, value in os.environ.items() if key != "CUTOUT_REVIEW_TOKEN"}
    return {**env, "MLFLOW_TRACKING_URI": local_tracking_uri(root)}


def _mlflow(env: dict[str, str]):
    from mlflow.tracking import MlflowClient

    return MlflowClient(env["MLFLOW_TRACKING_URI"])


# --- the pipeline -----------------------------------------------------------------------------------


def _pipeline_params(w: Path, s: DemoSettings, label: str) -> dict[str, object]:
    """The retraining recipe as pipeline parameters (see `cutout pipeline params`): fine-tune the champion;
    the gate compares on the `val` split, the real holdout and the new-backdrop holdout."""
    return {"data_uri": w / "raw", "feedback_uri": w / "feedback", "work_uri": w / "runs" / label,
            "model_variant": "u2netp", "clean_size": s.clean_size, "val_fraction": 0.15,
            "augment_copies": s.copies, "low_res_epochs": 0, "epochs": s.epochs, "input_size": s.input_size,
            "crop": s.crop, "lr": s.lr, "warmup_epochs": 0.1, "batch_size": s.batch_size,
            "workers": s.workers, "pretrained": CHAMPION_URI,
            "real_holdout_uri": w / "real-holdout",
            "extra_holdout_uris": w / "new-backdrop-holdout"}  # fmt: skip


def _run_pipeline(w: Path, params: dict[str, object], env: dict[str, str]) -> PipelineRun:
    """`cutout pipeline run --local`; what it registered and whether the gate promoted it."""
    flags = [x for name, value in params.items() for x in ("-p", f"{name}={value}")]
    work = Path(str(params["work_uri"]))
    _run_cli("pipeline", "run", "--local", "--pipeline-root", str(w / "kfp"), *flags, env=env,
             log=work.with_name(f"{work.name}.log"))  # fmt: skip
    (folder,) = work.iterdir()  # the run's folder, named by its KFP run id
    final = json.loads((folder / TRAINING_FOLDER / RUN_INFO.format(stage=FINAL)).read_text())
    client = _mlflow(env)
    (found,) = client.search_model_versions(f"run_id = '{final['run_id']}'")
    version = client.get_model_version(found.name, found.version)
    tags = version.tags
    threshold = tags.get(ROUTING_THRESHOLD_TAG)
    decision = promotion_tags(tags)
    intervals = {key.removesuffix("_interval"): value for key, value in decision.items()
                 if key.endswith("_interval")}  # fmt: skip
    pretrained = client.get_run(final["run_id"]).data.params.get("pretrained", "")
    return PipelineRun(folder, final["run_id"], str(version.version), float(tags["mean_iou"]),
                       decision.get("promoted") == "True", decision.get("reason", ""),
                       float(threshold) if threshold else None, pretrained, intervals)  # fmt: skip


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
    request = urllib.request.Request(url + v1_predict_path(MODEL_NAME), body, headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _champion(env: dict[str, str]) -> tuple[str, float | None]:
    """The champion's version and its calibrated routing threshold (None if it has none)."""
    champion = _mlflow(env).get_model_version_by_alias("cutout", "champion")
    threshold = champion.tags.get(ROUTING_THRESHOLD_TAG)
    return str(champion.version), float(threshold) if threshold else None


def _destinations(feedback: Path) -> dict[str, str]:
    """Where the transformer put each photo, by request id (the photo's name): `retrain` or `review`."""
    root, found = str(feedback), {}
    for uri in record_files(store_uri(root, AUTO)):
        found[json.loads(storage.read_bytes(uri))["request_id"]] = RETRAIN
    for item in list_pending(root):
        found[item["request_id"]] = REVIEW
    return found


def _serve(w: Path, photos: list[Path], s: DemoSettings, env: dict[str, str]) -> dict[str, str]:
    """Predictor and feedback transformer on 127.0.0.1 (`cutout serve local`); send photos through them.

    Returns:
        Where each photo went, as the stores say: `retrain` (score at or above the threshold) or `review`.
    """
    feedback, port = w / "feedback", _free_port()
    version, calibrated = _champion(env)
    fixed = given_threshold(s.threshold) is not None
    option = f" --threshold {s.threshold}" if fixed else ""
    console.print(f"$ cutout serve local --feedback-uri {feedback} --port {port}{option}", style="cyan",
                  highlight=False)  # fmt: skip
    if fixed:
        console.print(f"champion: version {version}; fixed routing threshold {s.threshold}", highlight=False)
    elif calibrated is not None:
        console.print(f"champion: version {version}; routing threshold {calibrated:.3f} (calibrated, "
                      "stored on the version)", highlight=False)  # fmt: skip
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


def _start_registry(w: Path, s: DemoSettings, env: dict[str, str], result: DemoResult) -> None:
    """Register the built-in model, calibrate its routing threshold on studio photos, make it champion."""
    output = _run_cli("register", "--model", s.start_from, env=env, capture=True)
    result.first_version = output.strip().splitlines()[-1]
    _run_cli("calibrate-threshold", "--model", version_uri(result.first_version), "--data",
             str(w / "calibration"), "--out", str(w / "calibration-report"), env=env)  # fmt: skip
    _run_cli("promote", "--version", result.first_version, env=env)
    result.first_threshold = _champion(env)[1]


def _retrain(w: Path, s: DemoSettings, env: dict[str, str], result: DemoResult) -> None:
    _step(f"6. Retrain (kfp.local): fine-tune the champion, {s.epochs} epoch at {s.input_size} px; the gate")
    params = _pipeline_params(w, s, RETRAIN_RUN)
    run = result.retrain = _run_pipeline(w, params, env)
    result.merged, result.corrected_in_merged = _merged_feedback(run)
    _say_merged(result.merged, result.corrected_in_merged, result.corrected)
    console.print(f"fine-tuned from {run.pretrained} (the champion when the run started)", highlight=False)
    _say_registered(run)
    for domain, interval in run.intervals.items():
        console.print(f"  {domain:13} candidate − champion {interval}", highlight=False)


def _write_report(w: Path, result: DemoResult, sections: list[GallerySection]) -> None:
    run = result.retrain
    verdict = ("promoted" if run.promoted else "not promoted") if run else "no retraining run"
    summary = (f"Version {result.first_version} (the built-in model) was the first champion; the "
               f"retraining run registered version {run.version if run else '-'}: {verdict}. "
               f"The gate: {run.reason if run else '-'}")  # fmt: skip
    result.report = write_sections(str(w / "report"), "cutout demo: the champion's cutouts, before and after "
                                   "the retraining", sections, summary)  # fmt: skip


def _say_results(w: Path, result: DemoResult, env: dict[str, str], started: float) -> None:
    _step("Results")
    console.print(f"first champion (version {result.first_version}): held-out studio photos mean IoU "
                  f"{result.mean_iou:.3f}, real photos {result.real_iou:.3f}", highlight=False)  # fmt: skip
    run = result.retrain
    if run is not None:
        verdict = (
            "promoted" if run.promoted else f"not promoted; the champion stays version {result.first_version}"
        )
        console.print(f"retraining: version {run.version}: {verdict}", highlight=False)
        for domain, interval in run.intervals.items():
            console.print(f"  {domain:13} candidate − champion {interval}", highlight=False)
    if result.before_after:
        shown = ", ".join(f"version {v} {iou:.3f}" for v, iou in result.before_after.items())
        console.print(f"new-backdrop holdout (never served), mean IoU: {shown}", highlight=False)
    console.print(f"review: {len(result.corrected)} of {len(result.routed)} served photos corrected; "
                  f"{len(result.corrected_in_merged)} corrected pairs in the retraining data",
                  highlight=False)  # fmt: skip
    store = env["MLFLOW_TRACKING_URI"]
    console.print(f"cutouts vs truth:  {result.report}\n"
                  f"pipeline run:      {w / 'runs'} (evaluation/, calibration/, deploy/ in it)\n"
                  f"feedback store:    {w / 'feedback'} (retrain/auto, retrain/corrected, review/)\n"
                  f"MLflow store:      {store}\n  look at it with: mlflow ui --backend-store-uri {store}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    result.seconds["total"] = time.perf_counter() - started
    console.print("time: " + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in result.seconds.items()))


def run_demo(workdir: Path, settings: DemoSettings = DemoSettings(), root: Path | None = None) -> DemoResult:
    """Run every step of the demo inside `workdir`, print where the results are and how long each took.

    The registry is the local default of `root` (the current directory): ``<root>/.cutout/mlflow.db``.
    """
    started, s, w, result = time.perf_counter(), settings, workdir, DemoResult()
    root = Path.cwd() if root is None else root
    _fresh_workdir(w)
    _fresh_registry(root)
    env = _environment(root)
    with _timed(result, "data"):
        _step(f"1. Data: {s.pairs} studio photos (synthetic) and the real photos cutout ships")
        _make_data(w, s, env)
    with _timed(result, "registry"):
        _step(f"2. Registry: the built-in {s.start_from} as the first champion")
        _start_registry(w, s, env, result)

    with _timed(result, "remove"):
        _step(f"3. Cut out {s.held_out} held-out {STUDIO_SIZE[0]}×{STUDIO_SIZE[1]} studio photos and "
              f"{s.real_shown} real photos")  # fmt: skip
        photos, cutouts = w / "photos", w / "cutouts"
        truths = _held_out_photos(photos, s.held_out, seed=HELD_OUT_SEED)
        real = _real_photos(w, s.real_shown)
        _run_cli("remove", str(photos), str(w / "real-photos"), "-o", str(cutouts), "--model",
                 CHAMPION_URI, env=env)  # fmt: skip
        studio_rows, result.mean_iou = _cutout_rows(photos, cutouts, truths)
        real_rows, result.real_iou = _cutout_rows(w / "real-photos", cutouts, real)
        console.print(f"mean IoU: studio {result.mean_iou:.3f}, real {result.real_iou:.3f}", highlight=False)
    sections = [
        GallerySection(f"Studio photos it never saw (version {result.first_version})", studio_rows,
                       f"mean IoU {result.mean_iou:.3f}"),
        GallerySection(f"Real photos from the holdout (version {result.first_version})", real_rows,
                       f"mean IoU {result.real_iou:.3f}"),
    ]  # fmt: skip

    with _timed(result, "serve"):
        _step("4. Serve the champion; the studio changed its backdrop for new photos")
        truths |= _held_out_photos(w / "new-backdrop", s.new_backdrop, NEW_BACKDROP_SEED, backdrop="checks")
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
    with _timed(result, "before and after"):
        _step("7. Before and after: the new-backdrop holdout, both versions")
        versions = [result.first_version, result.retrain.version]
        rows, result.before_after = _before_after(w, versions, env)
        means = ", ".join(f"version {v} {iou:.3f}" for v, iou in result.before_after.items())
        sections.append(GallerySection("Photos on the new backdrop that nobody served: before and after the "
                                       "retraining", rows, f"mean IoU {means}"))  # fmt: skip
        _write_report(w, result, sections)
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
