#!/usr/bin/env bash
# Build the real image with `make image` (the documented `bentoml build` and `bentoml containerize`),
# run it and check the service contract against it over HTTP; then stop and remove the container.
#
# This machine has no Docker engine and no registry, so the script also sets up what only this
# environment needs, all of it kept out of the project's release path:
#   - podman, runc and mmdebstrap from Debian (installed when missing; needs root);
#   - podman settings for the sandbox (raised ulimits are refused, crun fails on hybrid cgroups);
#   - a local stand-in for `python:3.11-slim`, built from Debian packages with mmdebstrap, which
#     also trusts this machine's proxy CA (pip and uv in the build go through a TLS-intercepting
#     proxy). It lives only in the script's own podman storage (IRIS_PODMAN_ROOT); a user's
#     `bentoml containerize` pulls the real base image;
#   - the project venv's uv, mounted read-only into the build (Debian's Python has no pip to fetch
#     it, and a bind mount never reaches the image).
#
# Usage: scripts/container_smoke.sh     (from anywhere; uses the project's .venv when present)
# Environment:
#   IRIS_PODMAN_ROOT   podman storage and settings (default /var/tmp/iris-bento-podman); keep it
#                      between runs for a warm build, delete it for a cold one.
#   BENTOML_HOME       model and Bento store (default: a fresh temporary folder, trained here).
#   IRIS_SMOKE_REPORT  where to write the measured figures as JSON
#                      (default: $IRIS_PODMAN_ROOT/smoke-report.json).
#   IRIS_IMAGE_TAG     image tag to build (default iris_classifier:smoke).
#   IRIS_PROJECT_DIR   the project to build (default: this script's repository).
set -Eeuo pipefail

readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROJECT_DIR="${IRIS_PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
readonly PODMAN_ROOT="${IRIS_PODMAN_ROOT:-/var/tmp/iris-bento-podman}"
readonly IMAGE_TAG="${IRIS_IMAGE_TAG:-iris_classifier:smoke}"
# The base image name BentoML's generated Dockerfile uses; bump BASE_REV to rebuild the stand-in.
readonly BASE_IMAGE="docker.io/library/python:3.11-slim"
readonly BASE_REV="3"
readonly CONTAINER="iris-smoke-$$"

if [[ -x "$PROJECT_DIR/.venv/bin/bentoml" ]]; then
    VENV_BIN="$PROJECT_DIR/.venv/bin"
else
    VENV_BIN="$(dirname "$(command -v bentoml)")"
fi
readonly VENV_BIN

export BENTOML_DO_NOT_TRACK=true
export CONTAINERS_CONF="$PODMAN_ROOT/containers.conf"
export CONTAINERS_STORAGE_CONF="$PODMAN_ROOT/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$PODMAN_ROOT/registries.conf"

log() { printf '[container-smoke] %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

write_podman_settings() {
    mkdir -p "$PODMAN_ROOT"
    # The sandbox refuses to raise rlimits (hard nofile is 20000) and crun rejects its cgroups.
    cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
    cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_ROOT/storage"
runroot = "$PODMAN_ROOT/run"
EOF
    # No registry is reachable here: short names resolve to local images only.
    cat >"$CONTAINERS_REGISTRIES_CONF" <<'EOF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
}

# The stand-in base image: Debian bookworm's Python 3.11, plus this machine's CA certificates.
build_base_image() {
    if [[ "$(podman image inspect --format '{{ index .Labels "iris-bento.base-rev" }}' \
        "$BASE_IMAGE" 2>/dev/null)" == "$BASE_REV" ]]; then
        log "base image $BASE_IMAGE present (local stand-in, rev $BASE_REV)"
        return
    fi
    local mirror security tmp
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | sed -n 1p)"
    security="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | sed -n 2p)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    security="${security:-http://deb.debian.org/debian-security}"
    tmp="$(mktemp -d)"
    log "building the local stand-in for $BASE_IMAGE with mmdebstrap (about a minute)"
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,ca-certificates,passwd \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
        --customize-hook="sync-in /usr/local/share/ca-certificates /usr/local/share/ca-certificates" \
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
        --customize-hook='ln -sf python3 "$1/usr/bin/python"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        bookworm "$tmp/rootfs.tar" \
        "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
        "deb $security bookworm-security main"
    podman import --quiet \
        --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL iris-bento.base-rev=$BASE_REV" \
        --change 'LABEL iris-bento.test-only="local stand-in for python:3.11-slim"' \
        --change 'CMD ["python3"]' \
        "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# From the container's log: seconds from a worker's death (argument 1, its pid) to the start-up
# line of its replacement (argument 2); exits 1 until the supervisor has logged the death and the
# replacement, and the new worker its start-up.
readonly READY_AFTER='
import json, sys
from datetime import datetime
killed, new = (int(arg) for arg in sys.argv[1:])
records = [json.loads(line) for line in sys.stdin if line.startswith("{")]
def when(message, **fields):
    for record in records:
        if record["message"] == message and all(record.get(k) == v for k, v in fields.items()):
            return datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S,%f")
    sys.exit(1)
when("worker replaced", worker_pid=new, replaced_pid=killed)
died = when("worker died", worker_pid=killed, signal="SIGKILL")
ready = when("service ready", pid=new)
print(f"{(ready - died).total_seconds():.2f}")
'

# SIGKILL a worker inside the container: a new one must start within seconds, and the supervisor
# must log both. Sets WORKER_REPLACED_S (kill to new pid) and WORKER_READY_S (kill to the new
# worker's start-up line).
check_worker_replacement() {
    local killed new_pid t
    read -r killed new_pid WORKER_REPLACED_S < <(
        podman exec -i "$CONTAINER" python - <"$SCRIPT_DIR/kill_a_worker.py"
    ) || true
    if [[ -z "$WORKER_REPLACED_S" ]]; then
        log "a killed worker was not replaced:"
        podman logs --tail 40 "$CONTAINER" >&2 || true
        exit 1
    fi
    t="$(now)"
    until WORKER_READY_S="$(podman logs "$CONTAINER" 2>&1 | python3 -c "$READY_AFTER" "$killed" "$new_pid")"; do
        if (($(date +%s) - ${t%.*} > 30)); then
            log "no log lines of worker $killed's death and of $new_pid replacing it:"
            podman logs --tail 40 "$CONTAINER" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    log "worker $killed SIGKILLed: worker $new_pid started after ${WORKER_REPLACED_S}s," \
        "ready after ${WORKER_READY_S}s; the supervisor logged both"
}

cleanup() {
    podman rm --force --time 5 "$CONTAINER" >/dev/null 2>&1 || true
    if [[ -n "${OWN_BENTOML_HOME:-}" ]]; then
        rm -rf "$OWN_BENTOML_HOME"
    fi
}

main() {
    local t0 t
    t0="$(now)"
    "$SCRIPT_DIR/apt_install.sh" podman runc mmdebstrap
    write_podman_settings
    t="$(now)"
    build_base_image
    local base_s
    base_s="$(elapsed "$t")"

    if [[ -z "${BENTOML_HOME:-}" ]]; then
        OWN_BENTOML_HOME="$(mktemp -d)"
        export BENTOML_HOME="$OWN_BENTOML_HOME"
    fi
    trap cleanup EXIT

    local uv_bin="$VENV_BIN/uv"
    [[ -x "$uv_bin" ]] || uv_bin="$(command -v uv)"
    t="$(now)"
    # `make image` trains the model when the store has none, builds the Bento and containerizes it.
    # --opt network=host: podman's bridge network leaves iptables chains behind in this sandbox.
    make -C "$PROJECT_DIR" --no-print-directory image IMAGE_TAG="$IMAGE_TAG" IMAGE_BACKEND=podman \
        CONTAINERIZE_ARGS="--opt network=host --opt volume=$uv_bin:/usr/local/bin/uv:ro" \
        >"$PODMAN_ROOT/image.log" 2>&1 || {
        tail -n 40 "$PODMAN_ROOT/image.log" >&2
        exit 1
    }
    local image_s size_bytes
    image_s="$(elapsed "$t")"
    size_bytes="$(podman image inspect --format '{{ .Size }}' "$IMAGE_TAG")"
    log "make image: ${image_s}s, image $IMAGE_TAG: $((size_bytes / 1000000)) MB"

    local port key
    port="$(free_port)"
    key="smoke-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    t="$(now)"
    # Run as Kubernetes will: read-only root filesystem, a writable /tmp only, no capabilities.
    podman run --detach --name "$CONTAINER" --network host \
        --read-only --read-only-tmpfs=false --tmpfs /tmp \
        --cap-drop ALL --security-opt no-new-privileges \
        -e IRIS_API_KEYS="$key" -e PORT="$port" -e BENTOML_HOST=127.0.0.1 \
        "$IMAGE_TAG" >/dev/null 2>"$PODMAN_ROOT/run.log"
    local url="http://127.0.0.1:$port"
    until "$VENV_BIN/python" "$SCRIPT_DIR/smoke_http.py" wait "$url" --timeout 1 >/dev/null 2>&1; do
        if [[ "$(podman inspect --format '{{ .State.Running }}' "$CONTAINER")" != true ]] ||
            (($(date +%s) - ${t%.*} > 90)); then
            log "the container did not become ready:"
            podman logs --tail 60 "$CONTAINER" >&2 || true
            exit 1
        fi
    done
    local ready_s
    ready_s="$(elapsed "$t")"
    log "container ready after ${ready_s}s"

    "$VENV_BIN/python" "$SCRIPT_DIR/smoke_http.py" check "$url" --key "$key" || {
        podman logs --tail 60 "$CONTAINER" >&2 || true
        exit 1
    }
    check_worker_replacement
    "$VENV_BIN/python" "$SCRIPT_DIR/smoke_http.py" wait "$url" --timeout 30 >/dev/null

    local memory
    memory="$(podman stats --no-stream --format '{{ .MemUsage }}' "$CONTAINER" 2>/dev/null || echo unknown)"
    log "container memory after the checks: $memory"
    local health
    health="$(podman healthcheck run "$CONTAINER" >/dev/null 2>&1 && echo healthy || echo unhealthy)"
    log "image HEALTHCHECK: $health"
    [[ "$health" == healthy ]] || exit 1

    t="$(now)"
    podman stop --time 30 "$CONTAINER" >/dev/null
    local stop_s
    stop_s="$(elapsed "$t")"
    podman rm "$CONTAINER" >/dev/null
    # Each build leaves the previous image's layers behind: drop those not used for a day, and keep
    # recent ones as the build cache.
    podman image prune --force --filter until=24h >/dev/null
    log "container stopped (SIGTERM to exit: ${stop_s}s) and removed; total $(elapsed "$t0")s"

    python3 - "${IRIS_SMOKE_REPORT:-$PODMAN_ROOT/smoke-report.json}" <<EOF
import json, sys
json.dump({"image": "$IMAGE_TAG", "image_size_bytes": $size_bytes,
           "base_image_seconds": $base_s, "image_seconds": $image_s,
           "ready_seconds": $ready_s,
           "stop_seconds": $stop_s, "memory": "$memory",
           "worker_replaced_seconds": $WORKER_REPLACED_S,
           "worker_ready_seconds": $WORKER_READY_S,
           "total_seconds": $(elapsed "$t0")}, open(sys.argv[1], "w"), indent=2)
EOF
}

main "$@"
