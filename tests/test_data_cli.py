"""The `cutout data` commands chain as the pipeline does: synth → clean → cluster → augment."""

import json

from typer.testing import CliRunner

from cutout.cli import app
from cutout.data.manifest import read_manifest


def invoke(*args):
    result = CliRunner().invoke(app, ["data", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_data_steps_chain(tmp_path):
    invoke("synth", tmp_path / "raw", "--count", "36", "--size", "120", "160")
    assert "kept 36, rejected 0" in invoke("clean", tmp_path / "raw", tmp_path / "clean", "--size", "96")
    assert "purity" in invoke("cluster", tmp_path / "clean", tmp_path / "clustered")
    invoke("augment", tmp_path / "clustered", tmp_path / "augmented", "--copies", "1")

    records = list(read_manifest(str(tmp_path / "augmented")))
    assert {r["split"] for r in records} == {"train", "val"}
    assert all(r["cluster"] for r in records)
    summary = json.loads((tmp_path / "augmented" / "summary.json").read_text())
    assert len(set(summary["train_after"].values())) == 1  # balanced across clusters


def test_data_step_with_missing_input_fails_clearly(tmp_path):
    result = CliRunner().invoke(app, ["data", "cluster", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "nowhere" in result.output
