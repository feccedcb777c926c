"""docker/install-medcl.sh, the Dockerfile's install step, on a made-up base without a Docker
daemon: a venv holding a fake CUDA torch (``2.13.0+cu128``, ``torch.version.cuda = "12.8"``) plays
the base image's interpreter, and the build extras hold a fake ``2.13.0+cpu`` wheel. The base's
torch must survive the install, a requirement that would replace it must fail the build, a CPU
torch must fail it under REQUIRE_CUDA=1, and the image's torchrun must run the interpreter
medcl is installed in. (Building the image and running torchrun in a container needs a
container engine: docker/smoke.sh.)"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "install-medcl.sh"
FAKE_RUN = "import sys\nprint('RUN', sys.executable, ' '.join(sys.argv[1:]))\n"


def _wheel(folder: Path, name: str, version: str, files: dict[str, str], requires: list[str] = ()) -> Path:
    """A minimal pure-Python wheel (PEP 427) holding ``files``."""
    dist = f"{name}-{version}.dist-info"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    files = {**files, f"{dist}/METADATA": meta,
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: medcl-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            z.writestr(arc, data)
            record.append(f"{arc},sha256={digest},{len(data)}")
        z.writestr(f"{dist}/RECORD", "\n".join(record + [f"{dist}/RECORD,,"]) + "\n")
    return path


def _torch_wheel(folder: Path, local: str, cuda: str | None) -> Path:
    init = f"import types\n__version__ = '2.13.0+{local}'\nversion = types.SimpleNamespace(cuda={cuda!r})\n"
    return _wheel(folder, "torch", f"2.13.0+{local}", {"torch/__init__.py": init, "torch/distributed/__init__.py": "",
                                                      "torch/distributed/run.py": FAKE_RUN})


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("base-wheels")
    extras = tmp_path_factory.mktemp("build-extras")
    _torch_wheel(extras, "cpu", None)                      # what a CPU wheel left in build-extras is
    _wheel(extras, "medcl_probe", "1.0", {"medcl_probe.py": ""}, ["torch>=2.13"])
    _wheel(extras, "wants_cpu_torch", "1.0", {"wants_cpu_torch.py": ""}, ["torch==2.13.0+cpu"])
    return {"cuda_torch": _torch_wheel(base, "cu128", "12.8"), "extras": extras}


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def _install(py: Path, extras: Path, require_cuda: str, *reqs: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},   # no wheelhouse of this machine
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run(["bash", str(SCRIPT), str(py), str(extras), "2.13.0", require_cuda, *reqs],
                          capture_output=True, text=True, env=env)


def _torch(py: Path) -> str:
    return subprocess.run([str(py), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_base_images_cuda_torch_is_kept_and_torchrun_runs_the_same_interpreter(wheels, tmp_path):
    py = _venv(tmp_path / "image")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", str(wheels["cuda_torch"])], check=True)
    r = _install(py, wheels["extras"], "1", "medcl_probe")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _torch(py) == "2.13.0+cu128 12.8"            # the +cpu wheel in the extras was not taken
    run = subprocess.run([str(py.parent / "torchrun"), "--nproc_per_node", "2", "-m", "medcl.cli", "pretrain"],
                         capture_output=True, text=True, check=True).stdout
    assert run.strip() == f"RUN {py} --nproc_per_node 2 -m medcl.cli pretrain"

    r = _install(py, wheels["extras"], "1", "wants_cpu_torch")   # would replace the CUDA torch
    assert r.returncode != 0 and _torch(py) == "2.13.0+cu128 12.8"


def test_a_cpu_torch_fails_the_build_when_cuda_is_required(wheels, tmp_path):
    py = _venv(tmp_path / "image")                       # no torch in the base: torch==2.13.0 from the extras
    r = _install(py, wheels["extras"], "1", "medcl_probe")
    assert r.returncode == 1 and "has no CUDA" in r.stderr and "REQUIRE_CUDA=1" in r.stderr
    assert _install(py, wheels["extras"], "auto", "medcl_probe").returncode == 0   # a CPU image may


def test_the_smoke_test_runs_torchrun_pretrain_in_the_container():
    """docker/smoke.sh (needs a container engine) pretrains with 2 processes through the image's
    torchrun; the same line as docs/deploy.md's, on the CPU with gloo."""
    smoke = (SCRIPT.parent / "smoke.sh").read_text()
    assert '--hostname localhost --entrypoint torchrun "$IMAGE" --standalone --nproc_per_node 2' in smoke
    assert "-m medcl.cli pretrain --cohort /data/out/demo/cohort" in smoke and "train.ddp_backend=gloo" in smoke
