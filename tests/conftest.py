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


# --- a real MLflow tracking server (sqlite backend, served artifacts) on 127.0.0.1 ---------------

import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Until ``url`` answers 200; fails with the process log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM (then SIGKILL) the process group led by ``proc``, which was started with
    ``start_new_session=True``: the server and the workers it forked, nothing else."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


class MlflowServer:
    """``mlflow server`` with a sqlite backend and ``--artifacts-destination`` in ``root``, one
    worker, on a free port of 127.0.0.1. ``stop()`` and ``start()`` again keep port and stores."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "server.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def environment(self) -> dict:
        # no job runner (MLflow's GenAI job queue: seven more processes that tracking does not use)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                                         cwd=self.root, start_new_session=True)
        try:
            wait_http(f"{self.uri}/health", self.proc, timeout, self.log)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One MLflow tracking server for the tracking, registry and serving tests."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


def point_tracking_at(server, monkeypatch) -> None:
    """MLFLOW_TRACKING_URI (and the server's ``credentials``, if it has any) at ``server``,
    quick retries, a fresh medcl tracker, for one test."""
    import medcl.tracking as tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    for key, value in getattr(server, "credentials", {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MEDCL_TRACKING_RETRIES", "2")
    monkeypatch.setenv("MEDCL_TRACKING_BACKOFF", "0.1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(tracking, "_tracker", None)
    monkeypatch.setattr(tracking, "_stack", [])


@pytest.fixture
def tracking_env(mlflow_server, monkeypatch, tmp_path):
    """MLFLOW_TRACKING_URI at the server, quick retries, a fresh medcl tracker; restores MLflow's
    global URIs after the test."""
    import mlflow

    point_tracking_at(mlflow_server, monkeypatch)
    yield mlflow_server
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


TINY_META_SPACING = 4.0


def tiny_meta() -> dict:
    """Model metadata for a tiny encoder: resnet10 at widen 0.25, 16^3 views, 4 mm voxels."""
    from medcl.config import Config, config_to_dict

    cfg = Config()
    cfg.data.spacing = TINY_META_SPACING
    return {"arch": "resnet10", "conv1_t_stride": 2, "widen_factor": 0.25, "view_size": 16,
            "data": config_to_dict(cfg)["data"]}


def tiny_encoder_and_head(seed: int = 0, classes=("atrophy", "healthy", "lesion")):
    """A tiny random-init encoder and a LinearHead fitted on random features (3 classes), with a
    temperature (2) and conformal calibration scores from other random features, as registered."""
    import numpy as np

    from medcl.fewshot.conformal import calibrate_head
    from medcl.fewshot.heads import make_head
    from medcl.models import build_encoder

    enc = build_encoder("resnet10", widen_factor=0.25, seed=seed).eval()
    rng = np.random.default_rng(seed)
    y = np.repeat(np.asarray(classes), 3)
    feats = rng.normal(size=(len(y), enc.feature_dim)) + np.repeat(np.eye(len(classes), enc.feature_dim) * 3, 3, axis=0)
    head = make_head("logreg", C=1.0).fit(feats, y).to_linear()
    head.temperature = 2.0
    y_cal = np.repeat(np.asarray(classes), 10)
    calibrate_head(head, rng.normal(size=(len(y_cal), enc.feature_dim)) +
                   np.repeat(np.eye(len(classes), enc.feature_dim) * 2, 10, axis=0), y_cal)
    return enc, head


@pytest.fixture(scope="session")
def registered_models(mlflow_server, tmp_path_factory):
    """medcl-encoder and medcl-fewshot registered on the session server (version 1 of each,
    alias champion) from tiny models, through the same calls the pipelines make."""
    import mlflow

    import medcl.tracking as tracking
    from medcl.serving import registry

    out = tmp_path_factory.mktemp("registered")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        mp.setenv("MEDCL_SYSTEM_METRICS", "false")
        mp.setattr(tracking, "_tracker", None)
        mp.setattr(tracking, "_stack", [])
        enc, head = tiny_encoder_and_head()
        meta = tiny_meta()
        tracking.setup(tracking.resolve_uri(None, out), "medcl-test-registry", out)
        with tracking.start_run("pretrain-tiny") as pre:
            enc_info = registry.log_encoder(enc, meta, "medcl-encoder", run=pre,
                                            version_tags={"medcl.pretrain_run_id": pre.run_id})
            enc_alias = registry.alias_new_version("medcl-encoder", enc_info.registered_model_version)
        lineage = {"medcl.pretrain_run_id": pre.run_id, "medcl.encoder_uri": f"models:/medcl-encoder/{enc_info.registered_model_version}"}
        with tracking.start_run("fewshot-tiny", tags=lineage) as fs:
            fs_info = registry.log_fewshot(enc, head, meta, "medcl-fewshot", run=fs, version_tags=lineage,
                                           card_info={"metrics": {"balanced accuracy": "0.5 [0.4, 0.6]"},
                                                      "lineage": {"pretraining run": pre.run_id}})
            fs_alias = registry.alias_new_version("medcl-fewshot", fs_info.registered_model_version)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return {"uri": mlflow_server.uri, "encoder_info": enc_info, "fewshot_info": fs_info,
            "aliases": (enc_alias, fs_alias), "pretrain_run_id": pre.run_id, "fewshot_run_id": fs.run_id,
            "encoder": enc, "head": head, "meta": meta, "out": out}


from contextlib import contextmanager  # noqa: E402


@contextmanager
def use_mlflow(uri: str):
    """MLflow's global tracking and registry URIs at ``uri`` for a block, then unset again
    (a ``models:/`` URI resolved with no registry URI would create ./mlflow.db)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


# --- a tiny real cohort for the training tests (test_resume.py, test_ddp.py, test_train_state.py) ---

@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """6 simulated subjects at 6 mm, ingested once per session."""
    from medcl.config import DataConfig
    from medcl.data.demo import make_demo_sources
    from medcl.data.ingest import ingest

    tmp = tmp_path_factory.mktemp("tiny")
    src = make_demo_sources(tmp / "src", 6, 0, 6.0)
    ingest([src.nifti_dir], tmp / "cohort", DataConfig(spacing=6.0), labels_csv=src.labels_csv, progress=False)
    return tmp / "cohort"


# --- MLflow on PostgreSQL as deployed (tests/pgserver.py): test_postgres.py, test_tracking_outage.py ---

@pytest.fixture(scope="session")
def pg_mlflow_server(tmp_path_factory):
    """A real PostgreSQL server and docker/mlflow-entrypoint.sh's ``mlflow server`` on it (basic
    auth, served artifacts), once per session; ``.credentials`` are the admin's. Skipped where
    PostgreSQL is not installed, unless MEDCL_REQUIRE_POSTGRES=1 (CI) makes that a failure."""
    from pgserver import EntrypointMlflowServer, PostgresServer, postgres_bin

    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("MEDCL_REQUIRE_POSTGRES") == "1":
            pytest.fail("MEDCL_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (apt-get install postgresql)")
        pytest.skip("no PostgreSQL (apt-get install postgresql; CI installs it and requires it)")
    pg = PostgresServer(bindir).start()
    server = EntrypointMlflowServer(tmp_path_factory.mktemp("mlflow-pg"), pg)
    try:
        yield server.start()
    finally:
        server.stop()
        pg.stop()
