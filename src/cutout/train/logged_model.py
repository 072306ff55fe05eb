"""The logged model: how a cutout checkpoint goes into MLflow, and how MLflow's pyfunc loads it again.

Here, above the model and the data: the wrapper takes photos (base64 files), which `cutout.data.io`
decodes, and gives the masks `cutout.model` computes from arrays.

A logged model (the run's artifact `model`) serves two kinds of reader from one place:

    MLmodel, requirements.txt, python_env.yaml   the pyfunc flavour (`mlflow.pyfunc.load_model`)
    python_model.pkl                             `MaskModel`, the wrapper below
    code/cutout/                                 this package, so the wrapper loads wherever the pip
                                                 requirements are installed (no cutout install needed)
    artifacts/model.ckpt                         our checkpoint (`cutout.model.weights` format)
    artifacts/model.onnx                         its fp32 ONNX export (`cutout.model.export`)

Not `mlflow.pytorch`: its default pt2 format fixes the graph to one image size.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from cutout.platform import storage
from cutout.platform.names import MODEL_NAME, version_uri
from cutout.platform.registry import ARTIFACT_NAME, CHECKPOINT, ONNX, register_model, set_version_tag
from cutout.platform.tracking import current_tracking_uri, start_run

IMAGE_COLUMN = "image"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Pinned to what runs here; listing them spares MLflow inferring them, which is slow, on every log.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pillow", "boto3")

# The wrapper needs the package's code, not the real photos or built-in weights shipped beside it.
_NOT_CODE = shutil.ignore_patterns("__pycache__", "*.pyc", "ccp", "weights")
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
        mlflow.set_tracking_uri(current_tracking_uri())  # the configured store, before anything is logged
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


def register_builtin(builtin: str, name: str = MODEL_NAME) -> str:
    """Register a built-in model (`u2netp`) as a new version of `name`, as if a run had trained it.

    Its checkpoint and ONNX export go in a run `builtin-<builtin>`; the version is tagged `builtin`.

    Returns:
        The new version number.

    Raises:
        cutout.model.builtin.BuiltinModelError: not a built-in name, or its file is missing or damaged.
    """
    from cutout.model.builtin import BUILTIN_MODELS, builtin_model_path
    from cutout.model.weights import load_model, save_checkpoint  # PyTorch, only when registering one

    builtin_model_path(builtin)  # an unknown name fails here with the list of built-in names
    model, metadata = load_model(builtin)
    with tempfile.TemporaryDirectory(prefix="cutout-builtin-") as folder:
        checkpoint = str(Path(folder) / "model.ckpt")
        save_checkpoint(checkpoint, model, metadata["variant"], metadata["input_size"], builtin=builtin)
        params = {"builtin": builtin, "sha256": BUILTIN_MODELS[builtin].sha256,
                  "variant": metadata["variant"], "input_size": metadata["input_size"]}  # fmt: skip
        version = register_checkpoint(checkpoint, f"builtin-{builtin}", params, name)
    set_version_tag(version_uri(version, name), "builtin", builtin)
    return version
