import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TEMPLATE_DIR = None


def mni_t1_path() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


@pytest.fixture(autouse=True)
def _site_secret(tmp_path_factory, monkeypatch):
    """Every test gets its own site secret file (never the user's ~/.medcl)."""
    secret_dir = tmp_path_factory.mktemp("secret")
    monkeypatch.setenv("MEDCL_SITE_SECRET_FILE", str(secret_dir / "site_secret"))
    monkeypatch.delenv("MEDCL_SITE_SECRET", raising=False)


@pytest.fixture(scope="session")
def mni_scan():
    """The MNI152 template, preprocessed at 3 mm: real anatomy for view tests."""
    from medcl.config import DataConfig
    from medcl.data.ingest import preprocess_file

    return preprocess_file(mni_t1_path(), DataConfig(spacing=3.0))
