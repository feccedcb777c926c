"""Metric logging off the training thread (medcl.tracking.background): the writer thread sends
every queued metric, in order, with the time it was logged at, and when MLflow is away the
records go to the spool in that same order; close() returns once nothing is left queued."""

from __future__ import annotations

import json
import time

import mlflow

import medcl.tracking as tracking
from conftest import free_port


def test_background_writer_sends_everything_in_order_with_logging_times(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-background", tmp_path)
    logged_at = {}
    with tracking.start_run("bg", log_environment=False, system_metrics=False) as run:
        writer = tracking.background_log()
        for step in range(40):
            logged_at[step] = time.time() * 1000
            writer.log_metrics({"loss": 1.0 / (step + 1), "health/std": float(step)}, step)
        time.sleep(0.05)
        writer.close()
        assert writer.pending() == 0 and not writer.thread.is_alive()
    history = mlflow.MlflowClient(uri).get_metric_history(run.run_id, "loss")
    assert [m.step for m in history] == list(range(40))
    assert all(m.value == 1.0 / (m.step + 1) for m in history)
    assert all(abs(m.timestamp - logged_at[m.step]) <= 2 for m in history)   # logged, not sent, time


def test_background_writer_spools_in_order_when_mlflow_is_away(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCL_TRACKING_RETRIES", "0")
    monkeypatch.setenv("MEDCL_TRACKING_PROBE", "3600")
    dead = f"http://127.0.0.1:{free_port()}"
    tracking.setup(dead, "medcl-background-away", tmp_path)
    spool = tracking.spool_path_for(tmp_path)
    with tracking.start_run("bg-away", log_environment=False, system_metrics=False):
        writer = tracking.background_log()
        for step in range(25):
            writer.log_metrics({"loss": float(step)}, step)
        writer.close()
        records = [json.loads(line) for line in spool.read_text().splitlines()]
    batches = [r for r in records if r["op"] == "log_batch"]
    assert records[0]["op"] == "create_run"
    assert [m[3] for r in batches for m in r["metrics"]] == list(range(25))
    assert [m[1] for r in batches for m in r["metrics"]] == [float(s) for s in range(25)]
