"""What a run ran on: package versions, git commit, Python, CUDA and GPU names.

``environment()`` returns a JSON-able dict (logged as ``environment.json`` with every run) and
``environment_tags()`` the few fields worth filtering runs by (logged as run tags). The git
commit comes from the checkout medcl was imported from, or from ``MEDCL_GIT_COMMIT`` (set in
the docker image, which has no ``.git``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

KEY_PACKAGES = ("medcl", "torch", "monai", "mlflow", "numpy", "nibabel", "pydicom", "scikit-learn", "scipy", "pandas")


def git_info(path: Path | None = None) -> dict:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding ``path`` (default: medcl's
    source), else ``MEDCL_GIT_COMMIT`` from the environment, else ``{"commit": "unknown"}``."""
    path = path or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        pass                    # no git, or not a checkout (an installed package, a docker image)
    env = os.environ.get("MEDCL_GIT_COMMIT", "").strip()
    return {"commit": env or "unknown", "dirty": None}


def gpu_info() -> dict:
    """CUDA availability, version and the name of every visible GPU (empty on CPU hosts)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return {"cuda_available": False, "gpus": []}
    info = {"cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
            "cudnn_version": None, "gpus": []}
    if info["cuda_available"]:
        info["cudnn_version"] = torch.backends.cudnn.version()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def package_versions() -> dict[str, str]:
    """Every installed distribution and its version, sorted by name."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out[name.lower()] = dist.version
    return dict(sorted(out.items()))


def environment() -> dict:
    packages = package_versions()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "git": git_info(),
        "gpu": gpu_info(),
        "key_packages": {p: packages.get(p, "not installed") for p in KEY_PACKAGES},
        "packages": packages,
    }


def environment_tags(env: dict) -> dict[str, str]:
    """The run tags: MLflow's own ``mlflow.source.git.commit`` plus ``medcl.env.*``."""
    gpus = env["gpu"]["gpus"]
    tags = {
        "mlflow.source.git.commit": env["git"]["commit"],
        "medcl.git.commit": env["git"]["commit"],
        "medcl.git.dirty": str(env["git"]["dirty"]).lower(),
        "medcl.env.python": env["python"],
        "medcl.env.platform": env["platform"],
        "medcl.env.cuda": str(env["gpu"]["cuda_version"] or "none"),
        "medcl.env.gpu": ", ".join(gpus) if gpus else "none",
        "medcl.env.gpu_count": str(len(gpus)),
    }
    for pkg in ("torch", "monai", "mlflow", "medcl"):
        tags[f"medcl.env.{pkg}"] = env["key_packages"][pkg]
    return tags
