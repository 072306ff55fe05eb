#!/usr/bin/env bash
# Build (and with --push, push) the three runtime images from the repository root:
#   cutout-pipeline  images/pipeline/Dockerfile  KFP steps, `cutout pipeline submit`, the MLflow server
#   cutout-train     images/training/Dockerfile  CUDA + NCCL + OpenMPI + SSH + Horovod (MPI, NCCL, Gloo)
#   cutout-serve     images/serving/Dockerfile   KServe predictor (default), transformer, review page
#
#   scripts/build-images.sh [--push] [ROLE ...]      ROLE: pipeline, training, serving (default: all)
#   REGISTRY=ghcr.io/acme/ TAG=0.1.0 scripts/build-images.sh --push
#
# REGISTRY is a prefix ending in "/" (default: none, local images); TAG defaults to the package version.
# DOCKER names the client (default: docker; podman works too).
set -euo pipefail

cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
REGISTRY=${REGISTRY:-}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}
declare -A IMAGES=([pipeline]=cutout-pipeline [training]=cutout-train [serving]=cutout-serve)

push=false
roles=()
for arg in "$@"; do
  case "$arg" in
    --push) push=true ;;
    pipeline | training | serving) roles+=("$arg") ;;
    *) echo "usage: $0 [--push] [pipeline|training|serving ...]" >&2; exit 2 ;;
  esac
done
[ ${#roles[@]} -gt 0 ] || roles=(pipeline training serving)

if ! command -v "$DOCKER" >/dev/null 2>&1; then
  echo "error: '$DOCKER' is not installed: building the images needs a container engine (Docker or" \
       "podman with DOCKER=podman). Nothing was built." >&2
  exit 1
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
  echo "error: '$DOCKER' is installed but no engine answers ('$DOCKER info' failed): start the Docker" \
       "daemon, or point DOCKER_HOST at one. Nothing was built." >&2
  exit 1
fi

for role in "${roles[@]}"; do
  image="${REGISTRY}${IMAGES[$role]}:${TAG}"
  echo "building $image from images/$role/Dockerfile"
  "$DOCKER" build -f "images/$role/Dockerfile" -t "$image" .
  if $push; then
    "$DOCKER" push "$image"
  fi
done
