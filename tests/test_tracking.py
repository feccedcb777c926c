"""Tracking on a real MLflow server: what a run logs (config, environment, system metrics,
per-step metrics, artifacts, nested runs), the pretraining pipeline's run and registered
encoder, the retry policy, and records the server refuses for good."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from support import head_volume

import medcl.tracking as tracking
from medcl.tracking.spool import TrackingWarning, call_with_retry, is_transient

REPO = Path(__file__).resolve().parents[1]


def _client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(uri, uri)


def _steps(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _artifact_text(uri: str, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri,
                                                    dst_path=str(tmp_path))).read_text()


def test_retry_waits_with_doubling_backoff_and_gives_up():
    calls, waits = [], []

    def flaky(n_failures, exc):
        def fn():
            calls.append(1)
            if len(calls) <= n_failures:
                raise exc
            return "ok"
        return fn

    down = MlflowException("API request to http://127.0.0.1:1/api failed with exception Connection refused")
    assert call_with_retry(flaky(3, down), retries=4, backoff=0.5, sleep=waits.append) == "ok"
    assert waits == [0.5, 1.0, 2.0] and len(calls) == 4
    calls.clear(), waits.clear()
    with pytest.raises(MlflowException):
        call_with_retry(flaky(10, down), retries=2, backoff=1.0, sleep=waits.append)
    assert waits == [1.0, 2.0] and len(calls) == 3
    # a request the server refuses (4xx) is not retried
    calls.clear(), waits.clear()
    bad = MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE)
    with pytest.raises(MlflowException):
        call_with_retry(flaky(1, bad), retries=5, backoff=1.0, sleep=waits.append)
    assert waits == [] and len(calls) == 1
    assert is_transient(down) and is_transient(ConnectionRefusedError()) and not is_transient(bad)
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))


def test_run_logs_config_environment_system_metrics_steps_and_nested_runs(tracking_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-test-tracking", tmp_path)
    assert uri == tracking_env.uri
    with tracking.start_run("unit-run", tags={"medcl.stage": "test"}) as run:
        tracking.log_params({"train.lr": 0.001, "model.arch": "resnet10"})
        tracking.log_dict({"train": {"lr": 0.001}}, "config.yaml")
        for step in range(5):
            tracking.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.001}, step)
        (tmp_path / "notes.txt").write_text("an artifact")
        tracking.log_artifact(tmp_path / "notes.txt", "extras")
        with tracking.start_run("child", nested=True, tags={"medcl.head": "prototype"}) as child:
            tracking.log_metrics({"balanced_accuracy": 0.7}, 5)
        time.sleep(1.0)  # a few system-metric samples
    client = _client(uri)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "unit-run"
    assert client.get_experiment(r.info.experiment_id).name == "medcl-test-tracking"
    assert r.data.params == {"train.lr": "0.001", "model.arch": "resnet10"}
    assert _steps(client, run.run_id, "loss") == {s: pytest.approx(1.0 / (s + 1)) for s in range(5)}
    # environment: git commit, package versions, GPU names
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    tags = r.data.tags
    assert tags["mlflow.source.git.commit"] == commit and tags["medcl.git.commit"] == commit
    assert tags["medcl.env.torch"] == torch.__version__ and tags["medcl.env.mlflow"] == mlflow.__version__
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert tags["medcl.env.gpu"] == (", ".join(gpus) if gpus else "none")
    assert tags["medcl.stage"] == "test"
    env = json.loads(_artifact_text(uri, run.run_id, "environment.json", tmp_path / "a"))
    assert env["git"]["commit"] == commit and env["packages"]["torch"] == torch.__version__
    assert env["gpu"]["gpus"] == gpus
    assert "lr: 0.001" in _artifact_text(uri, run.run_id, "config.yaml", tmp_path / "b")
    assert _artifact_text(uri, run.run_id, "extras/notes.txt", tmp_path / "c") == "an artifact"
    # MLflow's system metrics, through medcl's tracker
    assert any(k.startswith("system/cpu_utilization_percentage") for k in r.data.metrics), sorted(r.data.metrics)
    assert any(k.startswith("system/system_memory_usage_megabytes") for k in r.data.metrics)
    # the nested run
    c = client.get_run(child.run_id)
    assert c.data.tags["mlflow.parentRunId"] == run.run_id and c.info.status == "FINISHED"
    assert c.data.metrics == {"balanced_accuracy": 0.7}


def test_failed_block_marks_the_run_failed(tracking_env, tmp_path):
    tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-test-tracking", tmp_path)
    with pytest.raises(ZeroDivisionError):
        with tracking.start_run("crashes", system_metrics=False, log_environment=False) as run:
            tracking.log_metrics({"loss": 1.0}, 0)
            1 / 0
    assert _client(tracking_env.uri).get_run(run.run_id).info.status == "FAILED"


def test_a_refused_record_is_dropped_with_a_warning_and_logging_goes_on(tracking_env, tmp_path):
    tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-test-tracking", tmp_path)
    with tracking.start_run("refused", system_metrics=False, log_environment=False) as run:
        tracking.log_params({"a": 1})
        with pytest.warns(TrackingWarning, match="refused"):
            tracking.log_params({"a": 2})   # MLflow forbids changing a logged param
        for step in range(3):
            tracking.log_metrics({"loss": float(step)}, step)
    client = _client(tracking_env.uri)
    assert client.get_run(run.run_id).data.params == {"a": "1"}
    assert _steps(client, run.run_id, "loss") == {0: 0.0, 1: 1.0, 2: 2.0}
    assert not tracking.spool_path_for(tmp_path).exists()


def _tiny_cohort(root: Path, n: int = 6) -> Path:
    src = root / "src"
    src.mkdir()
    shape = (20, 24, 20)
    base = head_volume(shape, dtype=np.float64)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = base + rng.normal(0, 2, shape)
        nib.save(nib.Nifti1Image(img.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), str(src / f"sub-{i:02d}_T1w.nii.gz"))
    return src


def test_pretrain_pipeline_run_is_tracked_and_its_encoder_registered(tracking_env, tmp_path, monkeypatch):
    from medcl.config import load_config
    from medcl.data.ingest import ingest
    from medcl.pipelines.pretrain import run_pretrain

    monkeypatch.setenv("MEDCL_SYSTEM_METRICS", "false")
    cfg = load_config(None, ["data.spacing=4.0", "augment.view_size=16", "model.widen_factor=0.25", "train.epochs=2",
                             "train.batch_size=3", "train.num_workers=0", "train.warmup_epochs=0",
                             "tracking.encoder_model_name=medcl-encoder-pipeline-test"])
    src = _tiny_cohort(tmp_path)
    ingest([src], tmp_path / "cohort", cfg.data, progress=False)
    out = run_pretrain(cfg, tmp_path / "cohort", tmp_path / "out", tracking.resolve_uri(None, tmp_path / "out"), progress=False)
    client = _client(tracking_env.uri)
    r = client.get_run(out.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "pretrain-simclr"
    assert client.get_experiment(r.info.experiment_id).name == "medcl-pretrain"
    assert r.data.tags["medcl.stage"] == "pretrain" and r.data.tags["medcl.cohort.scans"] == "6"
    assert r.data.params["train.epochs"] == "2" and r.data.params["model.widen_factor"] == "0.25"
    losses = _steps(client, out.run_id, "loss")
    assert sorted(losses) == list(range(out.result.steps)) == [0, 1, 2, 3]
    assert [losses[s] for s in range(4)] == pytest.approx(out.result.losses)
    assert out.encoder_uri == "models:/medcl-encoder-pipeline-test/1"
    assert r.data.tags["medcl.encoder_uri"] == out.encoder_uri
    mv = client.get_model_version("medcl-encoder-pipeline-test", "1")
    assert mv.run_id == out.run_id and mv.tags["medcl.pretrain_run_id"] == out.run_id
    assert client.get_registered_model("medcl-encoder-pipeline-test").aliases == {"champion": "1"}
    assert "checkpoints/last.pt" in [f.path for f in client.list_artifacts(out.run_id, "checkpoints")]


def test_use_uri_points_mlflow_there_and_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uri = tracking.default_uri(tmp_path)
    try:
        tracking.use_uri(uri)
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
        assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
        assert tracking.resolve_uri(None, tmp_path / "other") == tracking.default_uri(tmp_path / "other")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
        tracking.use_uri(uri)
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
        assert tracking.resolve_uri(None, tmp_path) == "http://127.0.0.1:9"
        assert tracking.resolve_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
