"""The set-up protects what later steps need: Horovod built with PyTorch and Gloo, the CLI on the PATH."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_horovod_is_built_with_pytorch_and_gloo():
    report = subprocess.run(
        [BIN / "horovodrun", "--check-build"], capture_output=True, text=True, check=True
    ).stdout
    lines = {line.strip() for line in report.splitlines()}
    assert "[X] PyTorch" in lines and "[X] Gloo" in lines


def test_horovod_torch_runs_one_process():
    code = "\n".join(
        [
            "import torch, horovod.torch as hvd",
            "hvd.init()",
            "print(hvd.size(), hvd.allreduce(torch.ones(2)).tolist())",
        ]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[0] == "1 [1.0, 1.0]"


def test_cutout_command_has_help_everywhere():
    for args in ([], ["remove"], ["export"], ["export", "onnx"]):
        result = subprocess.run([BIN / "cutout", *args, "--help"], capture_output=True, text=True, check=True)
        assert "Usage" in result.stdout


def test_the_set_up_fetches_the_official_weights_and_replaces_a_damaged_copy(tmp_path):
    import hashlib
    import os

    from cutout.model.builtin import BUILTIN_MODELS

    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch-weights.sh"
    environment = {**os.environ, "CUTOUT_WEIGHTS_CACHE": str(tmp_path)}
    fetched = tmp_path / "u2netp.onnx"

    def fetch() -> subprocess.CompletedProcess:
        return subprocess.run([script, sys.executable], capture_output=True, text=True, env=environment)

    first = fetch()
    assert first.returncode == 0, first.stderr
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == BUILTIN_MODELS["u2netp"].sha256
    assert fetch().stdout == ""  # already there and intact: nothing to do
    fetched.write_bytes(b"damaged")
    assert "Fetching" in fetch().stdout
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == BUILTIN_MODELS["u2netp"].sha256


def test_the_project_explains_itself_and_points_at_nothing_outside_it():
    """A user's clone is all they have: no file refers to a folder beside the repository."""
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True)
    outside = []
    for name in tracked.stdout.splitlines():
        path = root / name
        if path.suffix in {".png", ".jpg", ".onnx"} or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        # Spelt in parts, so this test does not find itself.
        hints = ("../" + "shared", "shared/" + "NOTES", "DESIGN" + ".md")
        outside += [f"{name}: {hint}" for hint in hints if hint in text]
    assert not outside
    assert "docs/architecture.md" in (root / "README.md").read_text()
