"""The medcl image, built for real on a base whose system Python holds torch (as a CUDA PyTorch
runtime's does, here a CPU torch): the image keeps that torch, and its ``torchrun --nproc_per_node
2 -m medcl.cli pretrain`` (gloo) trains in the container.

Minutes of building: it runs only with ``MEDCL_DOCKER_BUILD_TEST=1`` and a Docker engine that
answers, on the Debian base of ``docker/make-local-base.sh`` (``MEDCL_BASE_IMAGE``) and a torch
wheel from ``MEDCL_WHEELHOUSE`` (default: ``PIP_FIND_LINKS``). docs/deploy.md records a run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = os.environ.get("MEDCL_ENGINE", "docker")
BASE = os.environ.get("MEDCL_BASE_IMAGE", "localhost/medcl-base:bookworm-python")
WHEELS = Path(os.environ.get("MEDCL_WHEELHOUSE") or os.environ.get("PIP_FIND_LINKS") or "/opt/wheels")
TORCH_BASE, IMAGE = "localhost/medcl-torchbase:test", "localhost/medcl:torchrun-test"


def _engine_answers() -> bool:
    return shutil.which(ENGINE) is not None and subprocess.run([ENGINE, "info"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(os.environ.get("MEDCL_DOCKER_BUILD_TEST") != "1" or not _engine_answers(),
                                reason="MEDCL_DOCKER_BUILD_TEST=1 and a Docker engine needed (minutes of building)")


def _run(*args: str, timeout: int = 1500) -> str:
    r = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{ENGINE} {' '.join(args[:4])}...: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r.stdout


def _ca_bundle() -> Path:
    """The CA bundle pip trusts here (PIP_CERT: a TLS-inspecting proxy may sit before PyPI)."""
    return Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")


def _torch_base(tmp_path: Path) -> None:
    """The base with torch installed into its system Python (not a venv)."""
    wheel = sorted(WHEELS.glob("torch-*.whl"))
    if not wheel:
        pytest.skip(f"no torch wheel in {WHEELS}: the base is built from a local torch wheel "
                    f"(e.g. `pip download torch==2.13.0 --no-deps -d {WHEELS}`)")
    ctx = tmp_path / "torchbase"
    ctx.mkdir()
    shutil.copy(wheel[-1], ctx)
    shutil.copy(_ca_bundle(), ctx / "ca.crt")
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE}\nCOPY {wheel[-1].name} ca.crt /tmp/\n"
        "RUN python3 -m venv /tmp/pip && site=$(python3 -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))') "
        "&& PIP_CERT=/tmp/ca.crt /tmp/pip/bin/pip install --no-cache-dir --target \"$site\" /tmp/torch-*.whl "
        "&& rm -rf /tmp/pip /tmp/*.whl /tmp/ca.crt\n")
    _run("build", "--network", "host", "-t", TORCH_BASE, str(ctx))


def test_the_image_keeps_the_base_torch_and_its_torchrun_pretrains(tiny_cohort, tmp_path):
    _torch_base(tmp_path)
    base_torch = _run("run", "--rm", "--entrypoint", "python3", TORCH_BASE, "-c",
                      "import torch; print(torch.__version__, torch.__file__)").strip()
    shutil.copy(_ca_bundle(), ROOT / "docker" / "build-extras" / "ca-bundle.crt")   # git-ignored
    _run("build", "--network", "host", "-f", str(ROOT / "docker" / "Dockerfile"), "-t", IMAGE,
         "--build-arg", f"BASE_IMAGE={TORCH_BASE}", "--build-arg", "REQUIRE_CUDA=auto", str(ROOT))
    image_torch = _run("run", "--rm", "--entrypoint", "python", IMAGE, "-c",
                       "import torch; print(torch.__version__, torch.__file__)").strip()
    assert image_torch == base_torch                     # the base's torch, not a second one
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    # --hostname localhost: without a network the container's name does not resolve (torchrun's store)
    _run("run", "--rm", "--network", "none", "--hostname", "localhost", "-v", f"{tiny_cohort}:/data/cohort:ro",
         "-v", f"{out}:/data/out", "--entrypoint", "torchrun", IMAGE, "--standalone", "--nproc_per_node", "2",
         "-m", "medcl.cli", "pretrain",
         "--cohort", "/data/cohort", "--out", "/data/out/tr", "--quiet", "--no-register", "augment.view_size=16",
         "model.widen_factor=0.125", "train.epochs=1", "train.batch_size=2", "train.num_workers=0",
         "train.device=cpu", "train.ddp_backend=gloo")
    assert list(out.glob("tr/**/encoder.pt")), sorted(str(p) for p in out.rglob("*"))[:20]
