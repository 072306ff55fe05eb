"""Kubernetes SDK model objects ⇄ plain dicts, strictly: a misspelled field is an error, not a silent drop.

The SDKs (kubernetes, kubeflow-training, kserve) are generated OpenAPI clients. Their
`sanitize_for_serialization` turns a model object into the dict the API server takes; their `deserialize`
goes the other way but drops every key it does not know, and KServe's cannot resolve the Kubernetes types
(`V1Container`, …) it refers to. So the way back is written here: it walks the same
`openapi_types`/`attribute_map` tables the SDKs generate, refuses unknown keys and wrong shapes with the
path of the offending field, and builds the SDK's own model objects.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import importlib
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import kubernetes.client

# Where the generated model classes live, searched in this order by class name.
_MODEL_MODULES = ("kubeflow.training.models", "kserve.models", "kubernetes.client")
_NATIVE = {"str": str, "int": int, "float": float, "bool": bool}


class UnknownFieldError(ValueError):
    """A dict does not match its SDK model: an unknown key, a wrong shape, or a missing required field."""


def to_dict(model: Any) -> Any:
    """The plain dict (JSON types, API field names) of an SDK model object, as the API server takes it."""
    return kubernetes.client.ApiClient().sanitize_for_serialization(model)


def from_dict(data: Any, model_class: type | str, path: str = "") -> Any:
    """Build an SDK model object from a dict, refusing anything the model does not define.

    Args:
        data: A dict with API field names (camelCase), as parsed from YAML or JSON.
        model_class: The SDK model class, or its name (`"V1beta1InferenceService"`, `"V1Container"`, …).
        path: Where `data` sits in the enclosing object, for error messages.

    Returns:
        The SDK model object; `to_dict` of it equals `data`.

    Raises:
        UnknownFieldError: A key the model does not define (with the keys it does), a value of the wrong
            type, or a required field left out.
    """
    return _convert(data, model_class if isinstance(model_class, str) else model_class.__name__, path or "$")


def _convert(value: Any, type_name: str, path: str) -> Any:
    if value is None:
        return None
    if type_name.startswith("list["):
        _expect(value, list, path)
        return [_convert(item, type_name[5:-1], f"{path}[{i}]") for i, item in enumerate(value)]
    if type_name.startswith("dict("):
        _expect(value, Mapping, path)
        item_type = type_name[5:-1].split(", ", 1)[1]
        return {key: _convert(item, item_type, f"{path}.{key}") for key, item in value.items()}
    if type_name in _NATIVE:
        return _primitive(value, type_name, path)
    if type_name == "datetime":
        return value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(str(value))
    model_class = _model_class(type_name)
    if model_class is None or not model_class.openapi_types:
        return value  # `object` (int-or-string, raw JSON) or a type the SDKs refer to but do not ship
    return _model(value, model_class, path)


def _model(value: Any, model_class: type, path: str) -> Any:
    _expect(value, Mapping, path)
    known = {key: attr for attr, key in model_class.attribute_map.items()}
    unknown = sorted(set(value) - set(known))
    if unknown:
        hints = [_hint(key, known) for key in unknown]
        raise UnknownFieldError(f"{path}: {model_class.__name__} has no field {', '.join(hints)}")
    kwargs = {
        known[key]: _convert(item, model_class.openapi_types[known[key]], f"{path}.{key}")
        for key, item in value.items()
    }
    try:
        return model_class(**kwargs)
    except ValueError as error:  # the generated setters' own checks: required fields, enums
        raise UnknownFieldError(f"{path}: {error}") from None


def _hint(key: str, known: dict[str, str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)


def _primitive(value: Any, type_name: str, path: str) -> Any:
    # bool is an int in Python, never in these schemas; quantities such as `cpu: 1` are typed str but
    # Kubernetes accepts numbers there, so str admits numbers too.
    allowed = {"str": (str, int, float), "int": (int,), "float": (int, float), "bool": (bool,)}[type_name]
    if isinstance(value, bool) != (type_name == "bool") or not isinstance(value, allowed):
        raise UnknownFieldError(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
    return value


def _expect(value: Any, kind: type, path: str) -> None:
    if not isinstance(value, kind):
        shape = "a list" if kind is list else "a mapping"
        raise UnknownFieldError(f"{path}: expected {shape}, got {type(value).__name__} {value!r}")


@functools.cache
def _model_class(name: str) -> type | None:
    # Modules are imported only as far as needed: kserve takes seconds and an MPIJob never needs it.
    for module_name in _MODEL_MODULES:
        model_class = getattr(_import(module_name), name, None)
        if isinstance(model_class, type) and hasattr(model_class, "attribute_map"):
            return model_class
    return None


def _import(name: str) -> ModuleType:
    """Import a module; kserve's model server parses sys.argv when imported, so hide the caller's flags."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        return importlib.import_module(name)
    finally:
        sys.argv = argv


def import_kserve() -> ModuleType:
    """The `kserve` package, imported without letting it parse (and possibly exit on) this program's flags."""
    return _import("kserve")


# The custom resources this project writes, by (apiVersion, kind).
RESOURCE_MODELS = {
    ("kubeflow.org/v1", "MPIJob"): "KubeflowOrgV1MPIJob",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


def parse_resource(data: Any) -> Any:
    """A manifest (an MPIJob or an InferenceService, as a dict) as its SDK model, strictly (see `from_dict`).

    Raises:
        UnknownFieldError: Not one of those kinds, or a field its model does not define.
    """
    if not isinstance(data, Mapping):
        raise UnknownFieldError(f"expected a manifest (a mapping), got {type(data).__name__}")
    key = (data.get("apiVersion"), data.get("kind"))
    if key not in RESOURCE_MODELS:
        known = ", ".join(f"{kind} {version}" for version, kind in RESOURCE_MODELS)
        raise UnknownFieldError(f"apiVersion/kind {key[0]}/{key[1]} is not one this checks ({known})")
    return from_dict(data, RESOURCE_MODELS[key], path=str(key[1]))
