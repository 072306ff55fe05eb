"""A mistake a user makes ends in one line that names it and what to do; the traceback only with --debug.

Without a terminal, output is whole lines: no progress bar.

The `cutout` command runs as a user runs it: its own process, no TTY, no COLUMNS, stdin closed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cutout.data.real import REAL_PHOTOS

CUTOUT = str(Path(sys.executable).with_name("cutout"))
PHOTO = str(sorted((Path(REAL_PHOTOS) / "images").glob("*.jpg"))[0])


def run_cutout(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "AWS_", "COLUMNS"))
    }
    return subprocess.run([CUTOUT, *args], cwd=cwd, env=clean | env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        pytest.param(("remove", PHOTO, "-o", "out", "--model", "models:/cutout@champion"), {},
                     ["Registered Model with name=cutout not found", ".cutout/mlflow.db", "cutout register"],
                     id="empty-registry"),
        pytest.param(("export", "onnx", "--model", "models:/cutout/4", "-o", "x.onnx"), {},
                     ["not found", "MLFLOW_TRACKING_URI"], id="export-from-empty-registry"),
        pytest.param(("remove", PHOTO, "-o", "out", "--model", "missing.onnx"), {},
                     ["missing.onnx"], id="model-file-missing"),
        pytest.param(("remove", PHOTO, "-o", "out", "--model", "u2netq"), {},
                     ["u2netq", "u2netp"], id="unknown-model-name"),
        pytest.param(("remove", "s3://shoot/2026/", "-o", "out"),
                     {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                      "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
                      "AWS_MAX_ATTEMPTS": "1"},
                     ["S3:", "127.0.0.1:9", "AWS_ENDPOINT_URL_S3"], id="unreachable-s3"),
        pytest.param(("pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * 0",
                      "-p", "data_uri=s3://cutout/raw"), {},
                     ["5 fields", "'0 0 3 * * 0'"], id="five-field-cron"),
        pytest.param(("promote", "--version", "latest"), {}, ["no model 'cutout'", "cutout register"],
                     id="promote-latest-of-nothing"),
        pytest.param(("register", "--run-id", "latest"), {}, ["logged a model", "cutout train"],
                     id="register-latest-of-nothing"),
    ],
)  # fmt: skip
def test_a_user_error_is_one_line_that_names_it(args, env, says, tmp_path):
    result = run_cutout(*args, cwd=tmp_path, **env)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "─" not in result.stderr  # no plain or rich traceback
    [line] = error_lines(result)
    assert all(part in line for part in says), line


def test_debug_shows_the_traceback(tmp_path):
    result = run_cutout("--debug", "remove", PHOTO, "-o", "out", "--model", "models:/cutout@champion",
                        cwd=tmp_path)  # fmt: skip

    assert result.returncode != 0
    assert "Traceback" in result.stderr or "─" in result.stderr
    assert "RestException" in result.stderr or "MlflowException" in result.stderr


def test_without_a_terminal_the_output_is_whole_lines_and_no_progress_bar(tmp_path):
    result = run_cutout("remove", PHOTO, "-o", "out", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "━" not in result.stderr  # a bar drawn into a log is noise between the result lines
    assert re.search(r"^1 written to out/?, 0 failed", result.stderr, flags=re.MULTILINE), result.stderr
