"""MLflow on PostgreSQL as deployed: a real PostgreSQL server and ``mlflow server`` started by
docker/mlflow-entrypoint.sh itself (conftest's ``pg_mlflow_server``: PostgreSQL backend store,
basic auth, artifacts served). medcl's commands run against it as a user runs them:
pretraining registers the encoder, few-shot evaluation reads it back and logs its run, two
few-shot models are registered (champion, challenger), ``medcl promote`` moves the champion and
``medcl predict`` uses it; the rows are then read from PostgreSQL itself. A wrong password stops
a command at once with one line. (The outage test runs against this server too:
tests/test_tracking_outage.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
from conftest import point_tracking_at

import medcl.tracking as tracking
from medcl.cli import main

TINY_PRETRAIN = ["data.spacing=6.0", "augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32",
                 "model.proj_dim=16", "train.epochs=1", "train.batch_size=2", "train.warmup_epochs=0",
                 "train.num_workers=0", "train.threads=1", "tracking.experiment=medcl-pg"]
TINY_FEWSHOT = ["fewshot.n_episodes=10", "fewshot.n_query=1", "fewshot.heads=prototype",
                "fewshot.n_boot=50", "fewshot.baselines=raw_voxels",
                "fewshot.pca_components=3", "fewshot.probe=false", "fewshot.budget_method=none",
                "fewshot.embedding_map=none", "fewshot.pdf=false"]


@pytest.fixture
def pg_env(pg_mlflow_server, monkeypatch):
    """conftest's ``point_tracking_at`` the PostgreSQL-backed server (with the admin's
    credentials); MLflow's global URIs are unset afterwards."""
    point_tracking_at(pg_mlflow_server, monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("MEDCL_SYSTEM_METRICS", "false")
    yield pg_mlflow_server
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _register_fewshot(server, cohort_dir, encoder_file, out) -> list[str]:
    """The pretrained encoder with a head fitted on the cohort, registered twice as
    medcl-fewshot as the demo registers it (a champion and a candidate); the aliases the two
    versions got. (The encoder comes from the pretraining folder: reading it back from the
    registry is what ``medcl fewshot`` just did, and each read is a hundred authenticated
    requests.)"""
    from medcl.config import load_config
    from medcl.data.cohort import Cohort
    from medcl.fewshot.suite import fit_deployable_head
    from medcl.pipelines.pretrain import encoder_meta
    from medcl.serving.inference import load_encoder
    from medcl.serving.registry import alias_new_version, log_fewshot

    cfg = load_config(None, TINY_PRETRAIN)
    meta = encoder_meta(cfg)
    encoder = load_encoder(encoder_file, meta)
    head, _ = fit_deployable_head(cfg, encoder, Cohort.load(cohort_dir), 1)
    tracking.setup(server.uri, "medcl-pg-fewshot", out)
    aliases = []
    for i in range(2):
        with tracking.start_run(f"register-{i}", log_environment=False) as run:
            info = log_fewshot(encoder, head, meta, "medcl-fewshot", run=run)
            aliases.append(alias_new_version("medcl-fewshot", info.registered_model_version))
    return aliases


def test_pretrain_fewshot_register_promote_and_predict_on_postgres(pg_env, tiny_cohort, tmp_path, capsys):
    server = pg_env
    assert main(["pretrain", "--cohort", str(tiny_cohort), "--out", str(tmp_path / "pre"), "--quiet",
                 *TINY_PRETRAIN]) == 0
    pre = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pre["encoder_uri"] == "models:/medcl-encoder/1" and pre["steps"] > 0

    assert main(["fewshot", "--encoder", "models:/medcl-encoder@champion", "--cohort", str(tiny_cohort),
                 "--shots", "1", "--out", str(tmp_path / "fs"), "--quiet", *TINY_PRETRAIN, *TINY_FEWSHOT]) == 0
    fs = json.loads((tmp_path / "fs" / "summary.json").read_text())
    assert fs["mlflow"]["fewshot_run_id"] and set(fs["fewshot"]) == {"pretrained", "random_init", "raw_voxels"}

    aliases = _register_fewshot(server, tiny_cohort, tmp_path / "pre" / "pretrain" / "encoder.pt", tmp_path / "register")
    assert aliases == ["champion", "challenger"]
    capsys.readouterr()
    assert main(["promote", "medcl-fewshot", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["medcl-fewshot@champion: version 1 -> 2",
                                                    "medcl-fewshot@challenger: version 2 -> -"]

    scan = sorted((tiny_cohort.parent / "src" / "nifti").glob("*.nii"))[0]
    assert main(["predict", "--model", "models:/medcl-fewshot@champion", str(scan)]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-3

    # everything is in PostgreSQL (not in some local file), the artifacts on the server's disk
    pg = server.pg
    runs = dict(pg.query("mlflow", "SELECT run_uuid, status FROM runs"))
    assert runs[pre["run_id"]] == "FINISHED" and runs[fs["mlflow"]["fewshot_run_id"]] == "FINISHED"
    assert pg.query("mlflow", "SELECT name, version FROM model_versions ORDER BY name, version") == [
        ("medcl-encoder", 1), ("medcl-fewshot", 1), ("medcl-fewshot", 2)]
    assert pg.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases ORDER BY name") == [
        ("medcl-encoder", "champion", 1), ("medcl-fewshot", "champion", 2)]
    assert list((server.root / "artifacts").rglob("encoder_weights.pt"))
    assert not list(tmp_path.rglob("mlflow.db"))


def test_a_wrong_password_stops_a_command_with_one_line(pg_env, tiny_cohort, tmp_path, capsys, monkeypatch):
    server = pg_env
    env = {**os.environ, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    proc = subprocess.run([sys.executable, "-m", "medcl.cli", "promote", "medcl-fewshot", "1"], capture_output=True,
                          text=True, timeout=120, env=env)
    expected = (f"medcl: MLflow at {server.uri} refused user 'admin' (HTTP 401): check MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_PASSWORD_FILE)")
    assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == (2, [expected], "")
    # pretraining stops before it starts: no run, no spool, no checkpoint
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    before = server.pg.query("mlflow", "SELECT count(*) FROM runs")
    assert main(["pretrain", "--cohort", str(tiny_cohort), "--out", str(tmp_path), "--quiet", *TINY_PRETRAIN]) == 2
    assert capsys.readouterr().err.splitlines() == [expected]
    assert server.pg.query("mlflow", "SELECT count(*) FROM runs") == before and not any(tmp_path.iterdir())
