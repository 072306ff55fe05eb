#!/usr/bin/env bash
# Build Horovod 0.28.1 (the last release) once into a wheel cache outside the repository and install it.
# Why a patch: its sdist asks for C++14, but torch 2.14's headers need C++20; the build fails without it.
set -euo pipefail

VENV_PYTHON=${1:?usage: build-horovod.sh VENV_PYTHON}
HOROVOD_VERSION=0.28.1
CACHE=${CUTOUT_WHEEL_CACHE:-$HOME/.cache/cutout/wheels}
mkdir -p "$CACHE"

wheel=$(ls "$CACHE"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "Building Horovod $HOROVOD_VERSION into $CACHE (about 10 minutes on 2 cores, once)..."
  "$VENV_PYTHON" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 20' "$src/horovod/torch/CMakeLists.txt"
  cuda_home=${CUDA_HOME:-/usr/local/cuda}
  # The system cmake (3.25): the cmake 4.x wheel rejects gloo's cmake_minimum_required. The toolkit's own
  # nvcc goes first so that CMake finds the toolkit root beside it, not beside a wrapper script.
  PATH="$cuda_home/bin:/usr/bin:$PATH" CUDAToolkit_ROOT="$cuda_home" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO \
    CUDA_HOME="$cuda_home" MAKEFLAGS=-j"$(nproc)" \
    "$VENV_PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$CACHE" "$src"
  wheel=$(ls "$CACHE"/horovod-"$HOROVOD_VERSION"-*.whl | head -n 1)
fi
"$VENV_PYTHON" -m pip install --quiet --no-deps "$wheel"
"$VENV_PYTHON" -m pip install --quiet cloudpickle psutil pyyaml cffi
