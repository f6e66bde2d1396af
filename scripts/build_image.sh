#!/usr/bin/env bash
# Build the service's OCI image the documented BentoML way, from anywhere in the repository
# (`make image`): train a model when the store has none, build the Bento (`bentoml build`) and
# containerize exactly that Bento. Expects the venv's bin first on PATH.
#
# Environment:
#   IMAGE_TAG      the image's name and tag (default iris_classifier:latest)
#   IMAGE_BACKEND  BentoML's builder backend (default: docker when a Docker engine answers,
#                  otherwise podman when installed)
# Arguments are passed on to `bentoml containerize` (for example --opt build-arg=...).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/model_store.sh
ensure_model

image_tag=${IMAGE_TAG:-iris_classifier:latest}
backend=${IMAGE_BACKEND:-}
if [[ -z $backend ]]; then
  if docker info >/dev/null 2>&1; then
    backend=docker
  elif command -v podman >/dev/null; then
    backend=podman
  else
    echo "No container engine: start Docker, or install podman (apt-get install podman)." >&2
    exit 1
  fi
fi
options=()
if [[ $backend == podman || $backend == buildah ]]; then
  # Podman's default OCI format has no HEALTHCHECK field; the Docker format keeps the image's.
  options+=(--opt format=docker)
fi

bento_tag=$(bentoml build --output tag . | sed -n 's/^__tag__://p')
echo "Built the Bento $bento_tag."
# From /: BentoML copies the Bento to a temporary folder and then refuses to read the Dockerfile
# template there unless it is below the current directory (bentoml issue 5566).
cd /
bentoml containerize "$bento_tag" --backend "$backend" --image-tag "$image_tag" "${options[@]}" "$@"
echo "Built the image $image_tag with $backend."
