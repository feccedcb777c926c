#!/usr/bin/env bash
# Build the medcl image and run a quick `medcl demo` inside it, then `torchrun --nproc_per_node 2
# -m medcl.cli pretrain` (gloo) with the image's torchrun, then `medcl predict` on the model the
# demo registered, as the image's non-root user. Record the output in docs/deploy.md.
#
#   docker/smoke.sh                      # docker if a Docker engine answers, else podman
#   MEDCL_ENGINE=podman MEDCL_LOCAL_BASE=1 MEDCL_WHEELHOUSE=/opt/wheels docker/smoke.sh
#
# MEDCL_LOCAL_BASE=1   no image registry: build the base with docker/make-local-base.sh
# MEDCL_BASE_IMAGE     base image (default: the CPU variant, python:3.11-slim-bookworm)
# MEDCL_WHEELHOUSE     a folder of wheels (e.g. a CPU torch) copied into the build
# MEDCL_CA_BUNDLE      CA bundle for pip inside the build (default: $PIP_CERT when set), for
#                      networks whose TLS-inspecting proxy re-signs PyPI's certificate
# MEDCL_ENGINE         docker | podman
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ENGINE=${MEDCL_ENGINE:-}
if [ -z "$ENGINE" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then ENGINE=podman
    else echo "smoke.sh: no Docker engine answers and podman is not installed" >&2; exit 2
    fi
fi
IMAGE=${MEDCL_IMAGE:-localhost/medcl:smoke}
OUT=${MEDCL_SMOKE_OUT:-$ROOT/out/smoke}
TORCH_INDEX_URL=${MEDCL_TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
if [ "${MEDCL_LOCAL_BASE:-0}" = 1 ]; then
    BASE=${MEDCL_BASE_IMAGE:-localhost/medcl-base:bookworm-python}
    docker/make-local-base.sh "$ENGINE" "$BASE"
    TORCH_INDEX_URL=${MEDCL_TORCH_INDEX_URL:-}
else
    BASE=${MEDCL_BASE_IMAGE:-python:3.11-slim-bookworm}
fi

# Engine flags. Some hosts (nested VMs, hybrid cgroups) refuse podman's defaults (crun cannot
# set the default rlimits or cgroups): then use runc with ulimits inside the host's hard limits.
FLAGS=(); RUNFLAGS=()
if [ "$ENGINE" = podman ] && ! podman run --rm --network none "$BASE" true >/dev/null 2>&1; then
    LIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
    if command -v runc >/dev/null && podman --runtime runc run --rm --network none "${LIMITS[@]}" "$BASE" true; then
        FLAGS=(--runtime runc); RUNFLAGS=("${LIMITS[@]}")
        echo "smoke.sh: this host needs podman --runtime runc ${LIMITS[*]}"
    else
        echo "smoke.sh: podman cannot start a container from $BASE on this host:" >&2
        podman run --rm "$BASE" true >&2 || true
        exit 3
    fi
fi

# Build extras (git-ignored): wheels, e.g. a CPU torch where only PyPI is reachable, and the
# CA bundle of a TLS-inspecting proxy.
find docker/build-extras -type f ! -name .gitignore -delete
if [ -n "${MEDCL_WHEELHOUSE:-}" ]; then cp "$MEDCL_WHEELHOUSE"/*.whl docker/build-extras/; fi
CA=${MEDCL_CA_BUNDLE:-${PIP_CERT:-}}
if [ -n "$CA" ]; then cp "$CA" docker/build-extras/ca-bundle.crt; fi

BUILD=(build -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE"
       --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" --build-arg "REQUIRE_CUDA=${MEDCL_REQUIRE_CUDA:-auto}"
       --build-arg "MEDCL_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
# podman 4 reads no <Dockerfile>.dockerignore by itself; docker (BuildKit) does.
if [ "$ENGINE" = podman ]; then
    BUILD+=(--format docker --network host --ignorefile docker/Dockerfile.dockerignore "${RUNFLAGS[@]}")
fi
echo "== $ENGINE ${FLAGS[*]} ${BUILD[*]} ."
start=$(date +%s)
"$ENGINE" "${FLAGS[@]}" "${BUILD[@]}" .
echo "== built $IMAGE in $(( $(date +%s) - start )) s"

rm -rf "$OUT"; mkdir -p "$OUT/secrets"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$OUT/secrets/site_secret"
chmod 0777 "$OUT"; chmod 0644 "$OUT/secrets/site_secret"
RUN=(run --rm --network none -v "$OUT:/data/out" -v "$OUT/secrets/site_secret:/run/secrets/medcl_site_secret:ro"
     -e MEDCL_SITE_SECRET_FILE=/run/secrets/medcl_site_secret "${RUNFLAGS[@]}")

echo "== user and healthcheck command inside the image"
"$ENGINE" "${FLAGS[@]}" "${RUN[@]}" --entrypoint sh "$IMAGE" -c \
    'id; python -c "import torch, mlflow, medcl.cli, medcl.tracking; print(\"healthcheck ok: torch\", torch.__version__, \"mlflow\", mlflow.__version__)"'
"$ENGINE" image inspect "$IMAGE" --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} healthcheck={{.Config.Healthcheck.Test}}' 2>/dev/null || true

echo "== medcl demo (quick variant)"
start=$(date +%s)
"$ENGINE" "${FLAGS[@]}" "${RUN[@]}" "$IMAGE" demo --out /data/out/demo --quiet \
    demo.n_subjects=18 data.spacing=6.0 augment.view_size=16 model.widen_factor=0.25 train.epochs=2 \
    train.batch_size=4 train.num_workers=0 train.device=cpu fewshot.shots=1,2 fewshot.n_episodes=20 fewshot.n_query=1
echo "== demo finished in $(( $(date +%s) - start )) s"

echo "== the image's torchrun: 2 processes (gloo) pretraining on the demo's cohort"
# --hostname localhost: without a network the container's own name does not resolve, and
# torchrun's rendezvous store listens on it
"$ENGINE" "${FLAGS[@]}" "${RUN[@]}" --hostname localhost --entrypoint torchrun "$IMAGE" --standalone --nproc_per_node 2 \
    -m medcl.cli pretrain --cohort /data/out/demo/cohort --out /data/out/torchrun --quiet --no-register \
    augment.view_size=16 model.widen_factor=0.25 train.epochs=1 train.batch_size=4 train.num_workers=0 \
    train.device=cpu train.ddp_backend=gloo
test -s "$OUT/torchrun/pretrain/encoder.pt" || test -s "$OUT/torchrun/encoder.pt"

echo "== medcl predict with the registered model, in a fresh container"
SCAN=$(find "$OUT/demo/demo_src/nifti" -name '*.nii.gz' | sort | head -1)
"$ENGINE" "${FLAGS[@]}" "${RUN[@]}" "$IMAGE" predict --tracking-uri sqlite:////data/out/demo/mlflow.db \
    --model models:/medcl-fewshot@champion "/data/out/demo/demo_src/nifti/$(basename "$SCAN")"
python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print('summary:', json.dumps({k: s[k] for k in ('cohort', 'mlflow')}))" "$OUT/demo/summary.json"
echo "== smoke OK ($ENGINE, base $BASE)"
