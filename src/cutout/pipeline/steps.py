"""One function per pipeline step, called by the KFP components in `components/` (and by tests directly).

Where a run's data goes: every step writes a new dataset (or report) into the run's folder,

    <work>/<run id>/merged, clean, clustered, augmented, training/, evaluation/, calibration/,
                    deploy/, outcome.json

where `<work>` is the `work_uri` pipeline parameter, or `runs/` beside the raw data when it is empty, and
the run id is the KFP run's. The data stays in our store (S3, or a local folder) rather than KFP's
artifact store: the training job's workers read it from there. KFP artifacts point at it
(`pointer`): each carries the location and the step's counts as metadata, which the KFP UI shows.

Training runs locally under `horovodrun` (`cutout train --workers N`) or on the cluster as a Training
Operator MPIJob (`cutout.platform.launcher.train_on_cluster`), optionally in two stages: most epochs at a
low resolution, then a fine-tune at the final size from the first stage's checkpoint (`--pretrained`), as
`make demo` does. The first stage itself may fine-tune given weights, e.g. the current champion
(`models:/cutout@champion`) in scheduled retraining.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field

from cutout.platform import storage
from cutout.platform.names import MODEL_NAME, NAMESPACE, version_uri
from cutout.train.config import DEFAULTS as TRAIN_DEFAULTS
from cutout.train.config import TrainConfig, on_cluster_ranks

RUNS_FOLDER = "runs"
OUTCOME_FILE = "outcome.json"
TRAINING_FOLDER = "training"  # beside the training data: checkpoints, run infos, TensorBoard logs
RUN_INFO = "run-{stage}.json"
LOW_RESOLUTION, FINAL = "low-resolution", "final"
_RELATIVE_IMAGE = re.compile(r"""src=(['"])(?![a-z]+:|/)([^'"]+)\1""")


# --- where things go --------------------------------------------------------------------------------


def parent_uri(uri: str) -> str:
    """The folder or prefix that holds `uri` (`s3://b/data/raw` → `s3://b/data`)."""
    if storage.is_s3(uri):
        bucket, key = storage.split_s3(uri)
        head = key.rstrip("/").rpartition("/")[0]
        return f"s3://{bucket}/{head}" if head else f"s3://{bucket}"
    return os.path.dirname(os.path.abspath(uri))


def run_folder(data_uri: str, work_uri: str, run_id: str, *parts: str) -> str:
    """The run's folder `<work_uri>/<run_id>` (or `runs/<run_id>` beside the raw data), joined with `parts`.

    Raises:
        ValueError: An empty run id, or one that is not a plain name.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_id or ""):
        raise ValueError(f"run id {run_id!r} is not a plain name (letters, digits, '.', '_', '-')")
    work = work_uri or storage.join(parent_uri(data_uri), RUNS_FOLDER)
    return storage.join(work, run_id, *parts)


def sibling(dataset_uri: str, name: str) -> str:
    """The folder beside a dataset in the same run folder (`…/<run>/merged` → `…/<run>/clean`)."""
    return storage.join(parent_uri(dataset_uri), name)


def pointer(path: str, metadata: dict) -> dict:
    """Write `metadata` as JSON to a KFP artifact's local `path`; return it for the artifact's metadata.

    The artifact's file is what KFP uploads to its own store: a small pointer, not the data.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(metadata, stream, indent=2)
    return metadata


def self_contained_html(index_uri: str) -> str:
    """An HTML report with its relative images inlined as data URIs, for a one-file KFP HTML artifact."""
    page, folder = storage.read_text(index_uri), parent_uri(index_uri)

    def inline(match: re.Match) -> str:
        quote, name = match.groups()
        kind = mimetypes.guess_type(name)[0] or "image/png"
        try:
            data = base64.b64encode(storage.read_bytes(storage.join(folder, name))).decode()
        except FileNotFoundError:
            return match.group(0)
        return f"src={quote}data:{kind};base64,{data}{quote}"

    return _RELATIVE_IMAGE.sub(inline, page)


# --- data steps: thin wrappers that say where their output went -------------------------------------


def clean(src: str, out: str, size: int) -> dict:
    """`cutout data clean`: the cleaned dataset's location and counts."""
    from cutout.data.clean import clean_dataset

    return {"uri": out, **asdict(clean_dataset(src, out, size))}


def cluster(src: str, out: str, k: int, val_fraction: float, overrides: str | None = None) -> dict:
    """`cutout data cluster`: location, counts per type and split, and the contact sheet's URI."""
    from cutout.data.cluster import cluster_dataset

    summary = asdict(cluster_dataset(src, out, k, overrides or None, val_fraction))
    return {"uri": out, "contact_sheet": storage.join(out, "report", "index.html"), **summary}


def augment(src: str, out: str, copies: int) -> dict:
    """`cutout data augment`: location and counts per cluster."""
    from cutout.data.augment import augment_dataset

    summary = asdict(augment_dataset(src, out, copies))
    return {"uri": out, **{key: value for key, value in summary.items() if key not in ("src", "dst")}}


# --- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """The pipeline's training: `cutout train`'s settings (`TrainConfig`, its defaults) for the final stage,
    and `low_res_epochs` > 0 adds a first stage at `low_res_size` that the final one fine-tunes.

    `pretrained` (a built-in model, by default the official `u2netp`; a checkpoint, `s3://` URI or
    `models:/cutout@champion`) is what the first stage fine-tunes; empty: it starts from scratch. A
    `models:/…@alias` naming no version yet falls back to the built-in `u2netp` with a printed note
    (`cutout.train.train.pin_pretrained`).
    """

    model: str = TRAIN_DEFAULTS.model
    epochs: int = TRAIN_DEFAULTS.epochs
    batch_size: int = TRAIN_DEFAULTS.batch_size
    lr: float = TRAIN_DEFAULTS.lr
    input_size: int = TRAIN_DEFAULTS.input_size
    crop: int = TRAIN_DEFAULTS.crop
    warmup_epochs: float = TRAIN_DEFAULTS.warmup_epochs
    low_res_epochs: int = 0
    low_res_size: int = 160
    low_res_lr: float = 2e-3  # from scratch at low resolution: a rate for random weights
    low_res_warmup_epochs: float = 0.3
    workers: int = 2
    loader_workers: int | None = None  # None: 1 locally (workers share a few cores), 4 on GPU nodes
    pretrained: str = TRAIN_DEFAULTS.pretrained or ""

    def stages(self, data: str, on_cluster: bool) -> list[tuple[str, TrainConfig]]:
        """(stage, its `cutout train` config), in order; each stage after the first fine-tunes the one
        before it (the caller sets `pretrained` to that stage's checkpoint)."""
        loaders = self.loader_workers or (4 if on_cluster else 1)
        final = TrainConfig(
            data, model=self.model, pretrained=self.pretrained, epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr, warmup_epochs=self.warmup_epochs,
            input_size=self.input_size, crop=min(self.crop, self.input_size), loader_workers=loaders,
            workers=self.workers,
            run_name=f"pipeline-{FINAL}",
        )  # fmt: skip
        if self.low_res_epochs <= 0:
            return [(FINAL, final)]
        size = self.low_res_size
        low = final.replace(
            epochs=self.low_res_epochs, input_size=size, crop=size, lr=self.low_res_lr,
            warmup_epochs=self.low_res_warmup_epochs, run_name=f"pipeline-{LOW_RESOLUTION}",
        )  # fmt: skip
        return [(LOW_RESOLUTION, low), (FINAL, final)]


@dataclass(frozen=True)
class ClusterTraining:
    """Where and how the MPIJob runs (see `cutout.platform.mpijob.MPIJobConfig`)."""

    job_name: str
    namespace: str = NAMESPACE
    image: str = ""  # empty: cutout-train:<version>
    gpus_per_worker: int = 1
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    timeout_s: float = 86_400.0


def train(data: str, out: str, settings: TrainSettings, on_cluster: ClusterTraining | None = None) -> dict:
    """Train every stage; return the final stage's run info (run id, model URI, checkpoint) and the stages'.

    Args:
        data: The augmented dataset (with its `val` split).
        out: The training folder: `checkpoints/<stage>/`, `run-<stage>.json` (and TensorBoard logs locally).
        settings: Hyper-parameters and workers.
        on_cluster: Run each stage as an MPIJob; None runs `horovodrun -np <workers>` here.

    Raises:
        RuntimeError: A local stage exited with an error.
        cutout.platform.launcher.StepFailed: An MPIJob failed or timed out.
    """
    pretrained, infos = None, {}
    for stage, config in settings.stages(data, on_cluster is not None):
        config = config.replace(checkpoint_dir=storage.join(out, "checkpoints", stage),
                                run_info=storage.join(out, RUN_INFO.format(stage=stage)),
                                pretrained=pretrained or config.pretrained)  # fmt: skip
        print(f"training stage {stage}: {' '.join(config.to_argv())}", flush=True)
        if on_cluster is None:
            _train_here(config, storage.join(out, "tensorboard", stage))
        else:
            _train_on_cluster(config, on_cluster, stage)
        infos[stage] = json.loads(storage.read_text(config.run_info))
        pretrained = infos[stage]["checkpoint"]
    return {**infos[FINAL], "stages": infos}


def _train_here(config: TrainConfig, log_dir: str) -> None:
    from cutout.train.train import cli

    if storage.is_s3(log_dir):  # TensorBoard writes locally; the run uploads the logs to MLflow
        log_dir = tempfile.mkdtemp(prefix="cutout-tensorboard-")
    argv = config.replace(log_dir=log_dir).to_argv()
    status = cli(argv)
    if status != 0:
        raise RuntimeError(f"cutout train {' '.join(argv)} failed with exit status {status}")


def _train_on_cluster(config: TrainConfig, cluster: ClusterTraining, stage: str) -> None:
    from kubernetes.client import V1Toleration

    from cutout.platform import mpijob
    from cutout.platform.launcher import train_on_cluster

    pool = mpijob.NodePool(dict(cluster.node_selector), tuple(V1Toleration(**t) for t in cluster.tolerations))
    job = mpijob.MPIJobConfig(
        name=f"{cluster.job_name}-{'low' if stage == LOW_RESOLUTION else 'final'}"[:63].rstrip("-"),
        namespace=cluster.namespace, image=cluster.image or mpijob.DEFAULT_IMAGE, workers=config.workers,
        gpus_per_worker=cluster.gpus_per_worker, node_pool=pool,
    )  # fmt: skip
    ranks = on_cluster_ranks(config, gpus=cluster.gpus_per_worker > 0)
    train_on_cluster(mpijob.TrainingArgs(tuple(ranks.to_argv())), job, timeout_s=cluster.timeout_s)


def job_name(run_id: str) -> str:
    """An MPIJob name from a run id: `cutout-train-<first 8 letters or digits>`."""
    tail = re.sub(r"[^a-z0-9]", "", run_id.lower())[:8] or "run"
    return f"cutout-train-{tail}"


# --- evaluation, registry, deployment ----------------------------------------------------------------


def evaluate(model_uri: str, data: str, out: str, run_id: str | None) -> dict:
    """Evaluate on the `val` split, write the report to `out`, and log both to the training run.

    Returns:
        The metrics (`mean_iou`, …, `per_cluster`) and the report's URI as `report`.
    """
    from cutout.evaluate.evaluation import evaluate_model

    result = evaluate_model(model_uri, data, out, split="val")
    if run_id:
        import mlflow

        from cutout.platform.tracking import configure_tracking, log_report

        configure_tracking()
        with mlflow.start_run(run_id=run_id):
            log_report(out)
            numbers = {f"eval_{k}": v for k, v in result.metrics.items() if isinstance(v, int | float)}
            mlflow.log_metrics(numbers)
    return {**result.metrics, "report": result.report}


def register_and_promote(
    run_id: str,
    metrics: dict,
    holdout: str,
    margin: float,
    calibration_out: str | None = None,
    real_holdout: str | None = None,
    extra_holdouts: list[str] | None = None,
) -> dict:
    """Register the run's model with its metrics; promote it if the gate says it beats the champion.

    The gate (`cutout.evaluate.gate`) scores the new version and the champion on the same photos, the
    holdout's `val` split and the real-photo holdout, per domain, and promotes only a gain beyond noise
    that loses no more than 0.005 mean IoU on any domain. With `calibration_out`, the new version's routing
    threshold is also chosen on the holdout's `val` split and stored on it (what the feedback transformer
    uses unless told otherwise).

    Args:
        real_holdout: A dataset of real photos scored beside the `val` split (all its pairs); None: none.
        extra_holdouts: More datasets scored beside them (all their pairs), per their records' domain.

    Returns:
        `version`, `model_uri` (`models:/cutout/<version>`), `promoted`, `reason`, `champion_version`,
        `comparisons` (per domain: means, difference, interval), `threshold`.
    """
    from cutout.data.manifest import manifest_hash
    from cutout.platform.registry import register_model, set_routing_threshold

    scores = {key: value for key, value in metrics.items() if isinstance(value, int | float)}
    version = register_model(run_id, MODEL_NAME, scores, manifest_hash(holdout))
    model_uri = version_uri(version)
    extra = [real_holdout] if real_holdout else []
    holdouts = [(holdout, "val")] + [(data, None) for data in extra + list(extra_holdouts or [])]
    threshold, scored = None, {}
    if calibration_out:
        from cutout.evaluate.calibration import calibrate_threshold

        calibration = calibrate_threshold(model_uri, holdout, "val", calibration_out)
        threshold, scored[holdouts[0]] = calibration.choice.threshold, calibration.images
        set_routing_threshold(model_uri, threshold)
        if real_holdout:
            real = check_routing_on_real_photos(model_uri, threshold, real_holdout, f"{calibration_out}-real")
            scored[holdouts[1]] = real.images
    # What the calibrations scored (the same IoUs) the gate does not score again.
    decision = gate_against_champion(MODEL_NAME, version, holdouts, margin, scored)
    print(f"{MODEL_NAME} version {version}: {'promoted' if decision['promoted'] else 'not promoted'}: "
          f"{decision['reason']}", flush=True)  # fmt: skip
    return {**decision, "model_uri": model_uri, "threshold": threshold}


def real_holdout(uri: str) -> str | None:
    """The `real_holdout_uri` pipeline parameter: empty, the real photos cutout ships; `none`, none."""
    if uri.strip().lower() == "none":
        return None
    if not uri:
        from cutout.data.real import REAL_PHOTOS

        return str(REAL_PHOTOS)
    return uri


def uri_list(uris: str) -> list[str]:
    """A comma-separated pipeline parameter as a list of URIs (empty: none)."""
    return [uri.strip() for uri in uris.split(",") if uri.strip()]


def check_routing_on_real_photos(model_uri: str, threshold: float, real_holdout: str, out: str):
    """What the routing threshold chosen on the `val` split does on real photos: the share it routes and
    the share of bad masks it catches, written on the version (`routing_on_real`) and its report to `out`.

    Returns:
        The real photos' `cutout.evaluate.calibration.Calibration` (each photo's IoU and score).
    """
    from cutout.evaluate.calibration import BAD_IOU, calibrate_threshold, routing_rates
    from cutout.platform.registry import set_version_tag

    real = calibrate_threshold(model_uri, real_holdout, None, out)
    routed, caught = routing_rates([i.score for i in real.images], [i.iou for i in real.images], threshold)
    caught_text = "no mask" if caught is None else f"{caught:.1%} of the masks"
    summary = (f"threshold {threshold:.4f} routes {routed:.1%} of {real.count} real photos and catches "
               f"{caught_text} with IoU < {BAD_IOU} ({real.bad_share:.1%} of them)")  # fmt: skip
    print(f"{model_uri} on real photos: {summary}", flush=True)
    set_version_tag(model_uri, "routing_on_real", summary)
    return real


Holdouts = list[tuple[str, str | None]]  # (dataset, split): the photos the gate compares models on
Scored = dict[tuple[str, str | None], list]  # holdout → per-photo results (`id`, `iou`, `domain`)


def gate_against_champion(
    name: str, version: str, holdouts: Holdouts, margin: float, scored: Scored | None = None
) -> dict:
    """Compare a version with the champion on the same holdouts, photo by photo, and record the verdict.

    Args:
        scored: The version's per-photo results already at hand, by holdout (anything with `id`, `iou`
            and `domain`, e.g. a calibration's images); those holdouts are not scored again for it.
    """
    from cutout.evaluate.gate import compare_paired, judge
    from cutout.platform.registry import champion_version, record_promotion

    champion = champion_version(name)
    if champion is None or str(champion.version) == str(version):
        reason = "first model: no champion yet" if champion is None else "already the champion"
        record_promotion(name, version, True, {"reason": reason})
        return {"version": str(version), "promoted": True, "reason": reason, "champion_version": None,
                "comparisons": []}  # fmt: skip
    ours = score_per_photo(version_uri(version, name), holdouts, scored)
    theirs = score_per_photo(version_uri(champion.version, name), holdouts)
    comparisons = [compare_paired(domain, ours[domain], theirs.get(domain, {})) for domain in sorted(ours)]
    verdict = judge(comparisons, margin)
    intervals = {f"{c.domain}_interval": f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}] ({c.count})"
                 for c in comparisons}  # fmt: skip
    details = {"reason": verdict.reason, "champion_version": champion.version, "margin": margin, **intervals}
    record_promotion(name, version, verdict.promoted, details)
    return {"version": str(version), "promoted": verdict.promoted, "reason": verdict.reason,
            "champion_version": str(champion.version),
            "comparisons": [asdict(c) for c in comparisons]}  # fmt: skip


def score_per_photo(
    model_uri: str, holdouts: Holdouts, scored: Scored | None = None
) -> dict[str, dict[str, float]]:
    """A model's IoU on every photo of the holdouts (dataset, split), grouped by domain, keyed by
    `<holdout index>/<pair id>` (two holdouts may reuse an id); `scored` holdouts are taken as given."""
    from cutout.evaluate.evaluation import score_model

    grouped: dict[str, dict[str, float]] = {}
    for index, holdout in enumerate(holdouts):
        results = (scored or {}).get(holdout)
        for score in score_model(model_uri, *holdout) if results is None else results:
            grouped.setdefault(score.domain, {})[f"{index}/{score.id}"] = score.iou
    means = (f"{domain} {sum(ious.values()) / len(ious):.4f} ({len(ious)} photos)"
             for domain, ious in grouped.items())  # fmt: skip
    print(f"{model_uri} scored on the holdouts: {', '.join(means)}", flush=True)
    return grouped


@dataclass(frozen=True)
class Deployment:
    """Where and how the deploy step serves a model version."""

    namespace: str = NAMESPACE
    image: str = ""  # empty: cutout-serve:<version>
    canary_percent: int | None = None
    timeout_s: float = 900.0


def deploy(model_uri: str, feedback_uri: str, threshold: float | None, out: str, deployment: Deployment,
           on_cluster: bool) -> dict:  # fmt: skip
    """Roll the model version out as the InferenceService; locally, write what would be deployed instead.

    Returns:
        `deployed` (bool), the InferenceService's YAML URI as `manifest`, and on the cluster `url`/`action`.
    """
    import yaml

    from cutout.platform import inference_service as isvc
    from cutout.platform.sdk_models import to_dict

    config = isvc.InferenceServiceConfig(
        namespace=deployment.namespace, image=deployment.image or isvc.DEFAULT_IMAGE, model_uri=model_uri,
        feedback_uri=feedback_uri, threshold=threshold, canary_traffic_percent=deployment.canary_percent,
    )  # fmt: skip
    manifest = storage.join(out, "inference-service.yaml")
    service = to_dict(isvc.build_inference_service(config))
    storage.write_text(manifest, yaml.safe_dump(service, sort_keys=False))
    if not on_cluster:
        print(f"local run: not deploying {model_uri}; the InferenceService it would apply: {manifest}")
        return {"deployed": False, "manifest": manifest}
    from cutout.platform.launcher import deploy_model

    done = deploy_model(config, timeout_s=deployment.timeout_s)
    return {"deployed": True, "manifest": manifest, "url": done.url, "action": done.action}


def record_outcome(folder: str, state: str, task: str, error_code: int | None, error_message: str | None,
                   job: str = "") -> dict:  # fmt: skip
    """Write the run's outcome to `<folder>/outcome.json` and print it (the exit handler's step)."""
    outcome = {"state": state, "job": job, "task": task, "error_code": error_code,
               "error_message": error_message or None, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ",
               time.gmtime()), "folder": folder}  # fmt: skip
    storage.write_text(storage.join(folder, OUTCOME_FILE), json.dumps(outcome, indent=2) + "\n")
    print(f"pipeline run {state}: {json.dumps(outcome)}", flush=True)
    return outcome
