"""The tracking server goes away: training goes on, says where its metrics are, and nothing
it logged is lost. The session's real ``mlflow server`` is killed (SIGKILL, by PID) in the
middle of a run and started again on the same port and the same backend store; and a whole run
made while nothing answers is replayed from its spool afterwards."""

from __future__ import annotations

import json
import os
import time

import mlflow
import pytest
from conftest import MlflowServer, point_tracking_at

import medcl.tracking as tracking
from medcl.tracking.spool import TrackingWarning


def kill(srv: MlflowServer) -> None:
    """Crash the server: SIGKILL its process group (the process we started and its workers)."""
    import signal

    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)
    srv.proc = None


@pytest.fixture
def env(tracking_env, monkeypatch, request):
    """conftest's ``tracking_env`` (the session's MLflow server, quick retries, a fresh
    tracker) made quicker still for outages; the server is running again afterwards (same
    port, same stores) whatever the test did to it. With the parameter ``"postgres"``: the
    MLflow server on PostgreSQL with basic auth, as deployed (conftest's ``pg_mlflow_server``)."""
    server = tracking_env
    if getattr(request, "param", "sqlite") == "postgres":
        server = request.getfixturevalue("pg_mlflow_server")
        point_tracking_at(server, monkeypatch)
    monkeypatch.setenv("MEDCL_TRACKING_BACKOFF", "0.05")
    monkeypatch.setenv("MEDCL_TRACKING_PROBE", "0")      # try to replay at every call while offline
    monkeypatch.setenv("MEDCL_SYSTEM_METRICS", "false")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    yield server
    if server.proc is None:
        server.start()


def _history(client, run_id, key):
    return {m.step: (m.value, m.timestamp) for m in client.get_metric_history(run_id, key)}


@pytest.mark.parametrize("env", ["sqlite", "postgres"], indirect=True)
def test_server_killed_mid_run_the_run_finishes_and_nothing_is_lost(env, tmp_path):
    server = env
    spool = tracking.spool_path_for(tmp_path)
    tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-outage", tmp_path)
    (tmp_path / "ckpt.txt").write_text("checkpoint at step 14")
    with tracking.start_run("outage", log_environment=False) as run:
        tracking.log_params({"lr": 0.1})
        for step in range(10):
            tracking.log_metrics({"loss": 100.0 - step, "acc": step / 100}, step)
        kill(server)
        t_down = time.time() * 1000
        with pytest.warns(TrackingWarning, match=f"unreachable.*kept in {spool}"):
            tracking.log_metrics({"loss": 90.0, "acc": 0.10}, 10)
        for step in range(11, 20):
            tracking.log_metrics({"loss": 100.0 - step, "acc": step / 100}, step)
            if step == 14:
                tracking.log_params({"batch_size": 16})
                tracking.log_artifact(tmp_path / "ckpt.txt", "checkpoints")
                (tmp_path / "ckpt.txt").write_text("overwritten later: the spool kept its own copy")
                tracking.set_tags({"phase": "during-outage"})
                tracking.log_dict({"note": "written while the server was down"}, "outage.json")
        assert spool.exists() and len(spool.read_text().splitlines()) == 10 + 4
        server.start()
        t_up = time.time() * 1000
        with pytest.warns(TrackingWarning, match="answers again"):
            tracking.log_metrics({"loss": 80.0, "acc": 0.20}, 20)
        assert not spool.exists()
        for step in range(21, 30):
            tracking.log_metrics({"loss": 100.0 - step, "acc": step / 100}, step)

    client = mlflow.MlflowClient(server.uri)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params == {"lr": "0.1", "batch_size": "16"} and r.data.tags["phase"] == "during-outage"
    for key, value in (("loss", lambda s: 100.0 - s), ("acc", lambda s: s / 100)):
        hist = _history(client, run.run_id, key)
        assert sorted(hist) == list(range(30)), f"{key}: steps {sorted(hist)}"
        assert all(hist[s][0] == pytest.approx(value(s)) for s in range(30))
        # spooled metrics keep the time they were logged at, not the time they were sent
        assert all(t_down - 1000 <= hist[s][1] <= t_up for s in range(10, 20))
    files = {f.path for f in client.list_artifacts(run.run_id)} | {f.path for f in client.list_artifacts(run.run_id, "checkpoints")}
    assert {"outage.json", "checkpoints/ckpt.txt"} <= files
    dest = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="checkpoints/ckpt.txt",
                                               tracking_uri=server.uri, dst_path=str(tmp_path / "dl"))
    assert open(dest).read() == "checkpoint at step 14"
    assert not tracking.spool_path_for(tmp_path).with_name("mlflow-spool-files").exists()


def test_run_while_the_server_stays_down_is_sent_later_by_replay(env, tmp_path, monkeypatch, capsys):
    """A whole run (with a nested run) while nothing answers at the tracking URI; the spool it
    leaves is replayed afterwards by ``python -m medcl.tracking replay`` (its ``main``)."""
    from conftest import free_port

    from medcl.tracking.__main__ import main as replay_main

    server = env
    dead = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    spool = tracking.spool_path_for(tmp_path)
    with pytest.warns(TrackingWarning) as caught:
        tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-offline", tmp_path)
        with tracking.start_run("offline-parent", tags={"medcl.stage": "pretrain"}) as run:
            assert run.run_id is None
            tracking.log_params({"epochs": 3})
            for step in range(25):
                tracking.log_metrics({"loss": 1.0 / (step + 1)}, step)
            with tracking.start_run("offline-child", nested=True, log_environment=False) as child:
                tracking.log_metrics({"balanced_accuracy": 0.8}, 5)
    messages = " ".join(str(w.message) for w in caught)
    assert f"kept in {spool}" in messages and f"python -m medcl.tracking replay {spool}" in messages
    assert spool.exists() and run.run_id is None and child.run_id is None

    assert replay_main(["replay", str(spool), "--tracking-uri", server.uri]) == 0
    assert "replayed" in capsys.readouterr().out and not spool.exists()

    client = mlflow.MlflowClient(server.uri)
    exp = client.get_experiment_by_name("medcl-offline")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"offline-parent", "offline-child"}
    parent, kid = runs["offline-parent"], runs["offline-child"]
    assert parent.info.status == kid.info.status == "FINISHED"
    assert kid.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.params == {"epochs": "3"} and parent.data.tags["medcl.stage"] == "pretrain"
    assert sorted(_history(client, parent.info.run_id, "loss")) == list(range(25))
    assert kid.data.metrics == {"balanced_accuracy": 0.8}
    env_json = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="environment.json",
                                                   tracking_uri=server.uri, dst_path=str(tmp_path / "dl"))
    assert json.load(open(env_json))["python"]
    # the runs keep the times they had, not the time of the replay
    assert parent.info.start_time <= kid.info.start_time <= kid.info.end_time <= parent.info.end_time


def test_a_model_that_cannot_be_registered_is_saved_locally_and_loads(env, tmp_path, monkeypatch):
    from conftest import free_port, tiny_encoder_and_head, tiny_meta

    from medcl.serving import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")   # nothing listens
    enc, head = tiny_encoder_and_head()
    with pytest.warns(TrackingWarning, match="was not registered.*saved at"):
        tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-offline", tmp_path)
        with tracking.start_run("offline-fewshot", log_environment=False) as run:
            info = registry.log_fewshot(enc, head, tiny_meta(), "medcl-fewshot", run=run)
    assert info is None
    saved = list((tmp_path / "unregistered-models").glob("medcl-fewshot-*"))
    assert len(saved) == 1 and (saved[0] / "MLmodel").exists()
    model = mlflow.pyfunc.load_model(str(saved[0]))
    vol = registry.example_volume(4.0)
    out = model.predict({"scan": [vol]}, params={"spacing": 4.0})
    assert list(out.columns) == ["atrophy", "healthy", "lesion", "label", "prediction_set", "coverage"]
    assert abs(out.iloc[0, :3].sum() - 1) < 1e-6
