"""The MLflow model registry: how a trained model is logged, registered, promoted and found again.

A logged model (the run's artifact `model`) serves two kinds of reader from one place:

    MLmodel, requirements.txt, python_env.yaml   the pyfunc flavour (`mlflow.pyfunc.load_model`)
    python_model.pkl                             `MaskModel`, the wrapper below
    code/cutout/                                 this package, so the wrapper loads wherever the pip
                                                 requirements are installed (no cutout install needed)
    artifacts/model.ckpt                         our checkpoint (`cutout.model.weights` format)
    artifacts/model.onnx                         its fp32 ONNX export (`cutout.model.export`)

`resolve_model_uri` fetches just the checkpoint or the ONNX file, for `cutout.model.loader`. Not
`mlflow.pytorch`: its default pt2 format fixes the graph to one image size.
"""

from __future__ import annotations

import base64
import contextlib
import math
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from cutout.platform import storage
from cutout.platform.tracking import current_tracking_uri, start_run

MODEL_NAME = "cutout"
CHAMPION = "champion"
ARTIFACT_NAME = "model"  # the logged model's name within its run: runs:/<run_id>/model
CHECKPOINT, ONNX = "checkpoint", "onnx"
IMAGE_COLUMN = "image"
HOLDOUT_TAG = "holdout"  # the evaluation set's manifest hash: scores compare only on the same holdout
ROUTING_THRESHOLD_TAG = "routing_threshold"  # below it a cutout goes to review (evaluate.calibration)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Pinned to what runs here; listing them saves MLflow's ~9 s of inferring them on every log.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pillow", "boto3")

# The wrapper needs the package's code, not the real photos or built-in weights shipped beside it.
_NOT_CODE = shutil.ignore_patterns("__pycache__", "*.pyc", "ccp", "weights")
_NOT_FOUND = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
    params=ParamSchema([ParamSpec("minmax", "boolean", True)]),
)


class MaskModel(mlflow.pyfunc.PythonModel):
    """Photos in, fused probability maps out, as `cutout remove` computes them.

    Input: a pandas DataFrame with a string column ``image``: one base64-encoded photo (JPEG, PNG, WebP,
    …) per row; photos may differ in size. Base64 because that is how images travel over KServe's and
    MLflow's JSON protocols.
    Params: ``minmax`` (default true) stretches each map to [0, 1] like the original U²-Net.
    Output: a list with one H×W float32 array in [0, 1] per row, at that photo's own resolution.
    """

    def load_context(self, context) -> None:
        from cutout.model.loader import load_predictor

        self.predictor = load_predictor(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list:
        from cutout.data.io import read_image
        from cutout.model.inference import predict_probabilities

        images = [read_image(base64.b64decode(text)) for text in model_input[IMAGE_COLUMN]]
        minmax = bool((params or {}).get("minmax", True))
        return predict_probabilities(self.predictor, images, minmax=minmax)


def pip_requirements() -> list[str]:
    """What the wrapper needs at load time, pinned to the versions installed here."""
    return [f"{name}=={installed_version(name).split('+')[0]}" for name in REQUIREMENTS]


def log_model(checkpoint_uri: str, run_id: str | None = None, onnx: bool = True) -> str:
    """Log a checkpoint as the run's model `model` (pyfunc wrapper, checkpoint and ONNX export).

    Args:
        checkpoint_uri: a local or `s3://` cutout checkpoint.
        run_id: the run to log into; by default the active run (MLflow starts one if none is active).
        onnx: also export and attach the ONNX file.

    Returns:
        The logged model's URI (``models:/<model_id>``).
    """
    from cutout.model.weights import read_state_dict

    with tempfile.TemporaryDirectory(prefix="cutout-log-") as tmp:
        artifacts = _model_files(checkpoint_uri, Path(tmp), onnx)
        metadata = read_state_dict(artifacts[CHECKPOINT])[1]
        code = shutil.copytree(PACKAGE_DIR, Path(tmp) / "code" / "cutout",
                               ignore=_NOT_CODE)  # fmt: skip
        _client()  # point MLflow at the configured store before anything is logged
        with _run_context(run_id), warnings.catch_warnings():
            # The signature is explicit; an input example would only cost a prediction at log time.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_NAME, python_model=MaskModel(), artifacts=artifacts, code_paths=[str(code)],
                pip_requirements=pip_requirements(), signature=SIGNATURE,
                metadata={key: metadata[key] for key in ("variant", "input_size") if key in metadata},
            )  # fmt: skip
    return info.model_uri


def _model_files(checkpoint_uri: str, folder: Path, onnx: bool) -> dict[str, str]:
    from cutout.model.export import export_model

    files = {CHECKPOINT: str(folder / "model.ckpt")}
    storage.copy(checkpoint_uri, files[CHECKPOINT])
    if onnx:
        files[ONNX] = str(folder / "model.onnx")
        export_model(files[CHECKPOINT], files[ONNX])
    return files


def _run_context(run_id: str | None) -> contextlib.AbstractContextManager:
    active = mlflow.active_run()
    if run_id is None or (active is not None and active.info.run_id == run_id):
        return contextlib.nullcontext()
    return mlflow.start_run(run_id=run_id)


def _client() -> MlflowClient:
    # The embedded default applies here too, not MLflow's own (./mlflow.db in the current folder).
    mlflow.set_tracking_uri(current_tracking_uri())
    return MlflowClient()


def register_model(
    run_id: str,
    name: str = MODEL_NAME,
    metrics: Mapping[str, float] | None = None,
    holdout: str | None = None,
) -> str:
    """Register the run's logged model as a new version of `name`, with its metrics as version tags.

    Args:
        run_id: the run that logged the model (see `log_model`).
        name: the registered model.
        metrics: evaluation metrics (e.g. ``mean_iou``); `promote` compares them.
        holdout: an id of the evaluation data (its manifest hash), so only like is compared with like.

    Returns:
        The new version number, as MLflow spells it (a string).
    """
    client = _client()
    tags = {key: repr(float(value)) for key, value in (metrics or {}).items()}
    if holdout is not None:
        tags[HOLDOUT_TAG] = holdout
    return str(mlflow.register_model(_logged_model_uri(client, run_id), name, tags=tags).version)


def register_checkpoint(
    checkpoint_uri: str, run_name: str, params: Mapping[str, object], name: str = MODEL_NAME
) -> str:
    """Log a checkpoint in a new run (`run_name`, with `params`) and register it as a new version.

    For weights no training run made here: a built-in model (`cutout register --model u2netp`) becomes a
    version like any other, so a fresh registry can start from it.

    Returns:
        The new version number.
    """
    # The project's experiment, whose artifacts sit beside a local store (not in the current folder).
    with start_run(run_name=run_name) as run:
        mlflow.log_params(dict(params))
        log_model(checkpoint_uri, run.info.run_id)
    return register_model(run.info.run_id, name)


def _logged_model_uri(client: MlflowClient, run_id: str) -> str:
    # MLflow 3 keeps models beside runs, not in them: find the run's `model` (the newest if logged twice).
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}' AND name = '{ARTIFACT_NAME}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1,
    )  # fmt: skip
    if not found:
        raise ValueError(f"run {run_id} has no logged model {ARTIFACT_NAME!r}: log one with log_model")
    return found[0].model_uri


def record_promotion(
    name: str, version: str, promoted: bool, details: Mapping[str, object], alias: str = CHAMPION
) -> None:
    """Move `alias` to the version when promoted, and write the decision's `details` on it as
    ``promotion.<key>`` tags, whichever way it went (the reason is what people read in the registry)."""
    client = _client()
    if promoted:
        client.set_registered_model_alias(name, alias, str(version))
    for key, value in {"promoted": promoted, **details}.items():
        client.set_model_version_tag(name, str(version), f"promotion.{key}", str(value))


def pin_alias(uri: str) -> str | None:
    """``models:/NAME@ALIAS`` → ``models:/NAME/VERSION`` of the version holding the alias now.

    Pinned, a URI keeps naming the same weights even if the alias moves meanwhile. Returns None when no
    version holds the alias (or the model is not registered); any other URI comes back unchanged.
    """
    from cutout.model.loader import REGISTRY_SCHEME

    if not uri.startswith(REGISTRY_SCHEME) or "@" not in uri:
        return uri
    name, alias = uri.removeprefix(REGISTRY_SCHEME).split("@", 1)
    version = champion_version(name, alias)
    return None if version is None else f"{REGISTRY_SCHEME}{name}/{version.version}"


def champion_version(name: str = MODEL_NAME, alias: str = CHAMPION):
    """The model version holding `alias`, or None when none does (or the model is not registered)."""
    try:
        # Not search_model_versions: in MLflow 3.17 its results carry empty aliases.
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        # A missing model says RESOURCE_DOES_NOT_EXIST; a missing alias, INVALID_PARAMETER_VALUE.
        if error.error_code in _NOT_FOUND:
            return None
        raise


def resolve_model_uri(uri: str, prefer: str = CHECKPOINT, dst: str | Path | None = None) -> Path:
    """Download the checkpoint (or, with ``prefer="onnx"``, the ONNX file) of a ``models:/`` URI.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/<model_id>``.
        prefer: ``checkpoint`` or ``onnx``.
        dst: an existing local folder to download into; a new temporary folder by default.

    Returns:
        The local path of the file.
    """
    if prefer not in (CHECKPOINT, ONNX):
        raise ValueError(f"prefer must be {CHECKPOINT!r} or {ONNX!r}, not {prefer!r}")
    _client()
    files = Model.load(uri).flavors["python_function"].get("artifacts", {})
    if prefer not in files:
        raise ValueError(f"{uri} has no {prefer} file (it holds: {', '.join(files) or 'none'})")
    folder = str(dst) if dst is not None else tempfile.mkdtemp(prefix="cutout-model-")
    return Path(ModelsArtifactRepository(uri).download_artifacts(files[prefer]["path"], dst_path=folder))


def set_version_tag(uri: str, key: str, value: str) -> tuple[str, str]:
    """Write one tag on the model version a ``models:/NAME/VERSION`` (or ``@ALIAS``) URI names."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = _client()
    found = get_model_name_and_version(client, uri)
    if len(found) != 2:
        raise ValueError(f"{uri} names no registered model version: use models:/NAME/VERSION or NAME@ALIAS")
    client.set_model_version_tag(*found, key, value)
    return found


def set_routing_threshold(uri: str, threshold: float) -> tuple[str, str]:
    """Store the routing threshold on the model version a URI names, as its `routing_threshold` tag.

    Args:
        uri: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (the version holding the alias now).
        threshold: the quality score below which a cutout goes to review (scores lie in [0, 1]).

    Returns:
        The model version's (name, version).

    Raises:
        ValueError: for a threshold that is not finite, or a URI naming no registered version.
        MlflowException: for a URI that is not ``models:/…``, or a model, version or alias that is missing.
    """
    if not math.isfinite(threshold):
        raise ValueError(f"a routing threshold is a finite number, got {threshold}")
    return set_version_tag(uri, ROUTING_THRESHOLD_TAG, repr(float(threshold)))


def routing_threshold(uri: str) -> float | None:
    """The routing threshold stored on the model version a ``models:/NAME/VERSION|NAME@ALIAS`` URI names.

    Returns:
        The threshold, or None when the version has none (not calibrated yet) or the URI names a
        logged model (``models:/<model_id>``) rather than a registered version.

    Raises:
        MlflowException: for a URI that is not ``models:/…``, or a model, version or alias that is missing.
    """
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = _client()
    found = get_model_name_and_version(client, uri)
    if len(found) != 2:
        return None
    value = client.get_model_version(*found).tags.get(ROUTING_THRESHOLD_TAG)
    return float(value) if value is not None else None
