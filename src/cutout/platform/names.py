"""The names the parts agree on: the registered model, its champion, and how a registry reference is spelt.

Pure Python, no MLflow import: the loader, the servers and the shells read these without loading the
registry client.
"""

from __future__ import annotations

from dataclasses import dataclass

APP = "cutout"  # the app's name: Kubernetes labels, the namespace, the MLflow and KFP experiments
MODEL_NAME = "cutout"  # the registered model every part trains, promotes and serves
NAMESPACE = APP  # where the jobs and services run unless an overlay says otherwise
EXPERIMENT = APP  # the MLflow experiment runs are logged to, and the KFP experiment runs belong to
CHAMPION = "champion"  # the alias of the version in service
REGISTRY_SCHEME = "models:/"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, by number or by alias: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``."""

    name: str = MODEL_NAME
    version: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if (self.version is None) == (self.alias is None):
            raise ValueError(f"a model reference names a version or an alias, not {self!r}")

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{REGISTRY_SCHEME}{self.name}@{self.alias}"
        return f"{REGISTRY_SCHEME}{self.name}/{self.version}"

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """Read ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; anything else is a ValueError."""
        rest = uri.removeprefix(REGISTRY_SCHEME) if is_registry_uri(uri) else ""
        name, at, alias = rest.partition("@")
        if at and name and alias:
            return cls(name, alias=alias)
        name, slash, version = rest.partition("/")
        if slash and name and version:
            return cls(name, version=version)
        raise ValueError(f"{uri!r} names no registered model version: use {REGISTRY_SCHEME}NAME/VERSION or "
                         f"{REGISTRY_SCHEME}NAME@ALIAS")  # fmt: skip


def is_registry_uri(reference: str) -> bool:
    """Whether a model reference points into the registry (rather than at a file or a built-in name)."""
    return reference.startswith(REGISTRY_SCHEME)


def version_uri(version: str | int, name: str = MODEL_NAME) -> str:
    """``models:/NAME/VERSION``."""
    return str(ModelRef(name, version=str(version)))


CHAMPION_URI = str(ModelRef(alias=CHAMPION))  # models:/cutout@champion

# The routing threshold: a cutout whose quality score is below it goes to review.
ROUTING_THRESHOLD_TAG = "routing_threshold"  # where a version keeps its calibrated one
CALIBRATED = -1.0  # how a float parameter (KFP has no None) asks for the version's calibrated threshold
UNCALIBRATED_THRESHOLD = 0.5  # for a model that has none: a file, or a version never calibrated


def given_threshold(value: float | None) -> float | None:
    """A threshold someone chose, or None for "the version's calibrated one" (None or any negative)."""
    return None if value is None or value < 0 else value
