#!/usr/bin/env bash
# Install medcl into the interpreter PYTHON beside the base image's torch, and put a torchrun
# that runs that same interpreter next to it. Called by docker/Dockerfile; tests/test_docker.py
# runs it on a made-up base.
#
#   docker/install-medcl.sh PYTHON EXTRAS_DIR TORCH_VERSION REQUIRE_CUDA REQUIREMENT...
#
# - A torch already in the base image (a CUDA PyTorch runtime) is kept: pip is constrained to its
#   exact version (e.g. 2.13.0+cu128), so no wheel in EXTRAS_DIR (a CPU torch sorts above it)
#   and no index can replace it. Without one, torch==TORCH_VERSION is installed.
# - The build fails if torch.version.cuda changed, or (REQUIRE_CUDA=1) if it is not set:
#   training must never fall back to the CPU silently. REQUIRE_CUDA=auto: only the first check.
# - PYTHON's folder gets `torchrun` = `PYTHON -m torch.distributed.run`: the base image's own
#   torchrun would start the base interpreter, where medcl is not installed.
set -euo pipefail
py=$1; extras=$2; torch_version=$3; require_cuda=$4; shift 4

probe() { "$py" -c "import torch; print($1)" 2>/dev/null || true; }
base_torch=$(probe 'torch.__version__')
base_cuda=$(probe 'torch.version.cuda or ""')
constraints=$(mktemp)
want=()
if [ -n "$base_torch" ]; then
    echo "torch==$base_torch" > "$constraints"
    echo "install-medcl: keeping the base image's torch $base_torch (CUDA ${base_cuda:-none})"
else
    want=("torch==$torch_version")
fi
"$py" -m pip install --no-cache-dir --find-links "$extras" --constraint "$constraints" "${want[@]}" "$@"
rm -f "$constraints"

torch_now=$(probe 'torch.__version__')
cuda_now=$(probe 'torch.version.cuda or ""')
if [ -n "$base_torch" ] && [ "$torch_now" != "$base_torch" ]; then
    echo "install-medcl: torch is $torch_now after the install, $base_torch in the base image" >&2
    exit 1
fi
if [ "$cuda_now" != "$base_cuda" ] && [ -n "$base_torch" ]; then
    echo "install-medcl: torch.version.cuda is '${cuda_now}' after the install, '${base_cuda}' in the base image" >&2
    exit 1
fi
if [ "$require_cuda" = 1 ] && [ -z "$cuda_now" ]; then
    echo "install-medcl: torch $torch_now has no CUDA (torch.version.cuda is None) but REQUIRE_CUDA=1" >&2
    exit 1
fi
bin=$(dirname "$py")
# shellcheck disable=SC2016  # "$@" is for the wrapper script, not expanded here
printf '#!/bin/sh\nexec %s -m torch.distributed.run "$@"\n' "$py" > "$bin/torchrun"
chmod 755 "$bin/torchrun"
echo "install-medcl: torch $torch_now (CUDA ${cuda_now:-none}); torchrun -> $py -m torch.distributed.run"
