"""A real PostgreSQL server, and ``mlflow server`` on it started by docker/mlflow-entrypoint.sh
itself (PostgreSQL backend store, basic auth, artifacts served), for the tests
(``from pgserver import ...``, as ``conftest``; no test module imports another).

PostgreSQL comes from Debian's ``postgresql`` package (``.ci/run`` installs it): its binaries
are found on PATH or under ``/usr/lib/postgresql/<version>/bin``. The server runs as the
``postgres`` user when the tests run as root (PostgreSQL refuses root), listens on a free
port of 127.0.0.1 only, and is stopped by its PID.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import MlflowServer, free_port

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "mlflow-entrypoint.sh"
PG_PASSWORD = "pg p@ss/word:1"     # characters the entrypoint must quote into the URL
ADMIN_PASSWORD = "admin-secret-1"


def postgres_bin() -> Path | None:
    """The folder of ``postgres``, ``initdb`` and ``psql``: PATH first, else the newest of
    Debian's ``/usr/lib/postgresql/*/bin``."""
    exe = shutil.which("postgres")
    if exe and shutil.which("initdb") and shutil.which("psql"):
        return Path(os.path.realpath(exe)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``initdb`` into a fresh folder, then ``postgres`` on 127.0.0.1:``port`` with the
    superuser ``mlflow`` (password :data:`PG_PASSWORD`, scram over TCP) and databases
    ``mlflow`` and, from docker/postgres-init.sql, ``mlflow_auth``, as compose makes them."""

    def __init__(self, bindir: Path):
        self.bin = bindir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="medcl-pg-"))   # not under pytest's 0700 tmp: postgres reads it
        self.data = self.dir / "data"
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _run(self, *cmd: str) -> None:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, **self._as_user())
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")

    def _as_user(self) -> dict:
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "cwd": self.dir} if self.user else {"cwd": self.dir}

    def start(self, timeout: float = 60) -> "PostgresServer":
        pwfile = self.dir / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self.user:
            for p in (self.dir, pwfile):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "mlflow", f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync")
        log = open(self.dir / "postgres.log", "ab")
        self.proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                      "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=off",
                                      "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._as_user())
        deadline = time.monotonic() + timeout
        while subprocess.run([str(self.bin / "pg_isready"), "-h", str(self.dir), "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start: {(self.dir / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.2)
        self.psql("-c", "CREATE DATABASE mlflow;")
        init = self.dir / "postgres-init.sql"    # compose's init script, as the postgres image runs it
        shutil.copy(REPO / "docker" / "postgres-init.sql", init)
        os.chmod(init, 0o644)
        self.psql("-f", str(init))
        return self

    def psql(self, *args: str) -> None:
        self._run(str(self.bin / "psql"), "-v", "ON_ERROR_STOP=1", "-h", str(self.dir), "-p", str(self.port),
                  "-U", "mlflow", "-d", "postgres", *args)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow", password=PG_PASSWORD,
                              dbname=database) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster's PID), then the data folder goes."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class EntrypointMlflowServer(MlflowServer):
    """docker/mlflow-entrypoint.sh run as it is, with the environment compose gives it (secret
    files, PostgreSQL host, database names) pointed at ``pg``; only what a test machine needs
    differs: the port (appended arguments override the script's ``--host``/``--port``), the
    allowed hosts, the artifact folder and no job runner. Started and stopped as
    conftest's ``MlflowServer``; ``credentials`` are the admin's."""

    def __init__(self, root: Path, pg: PostgresServer):
        super().__init__(root)
        self.pg = pg
        self.credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}

    def command(self) -> list[str]:
        return ["sh", str(ENTRYPOINT), "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict:
        secrets = self.root / "secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        (secrets / "postgres_password").write_text(PG_PASSWORD + "\n")
        (secrets / "mlflow_password").write_text(ADMIN_PASSWORD + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "POSTGRES_"))}
        env.update({"PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
                    "MLFLOW_DISABLE_TELEMETRY": "true", "TMPDIR": str(self.root),
                    # as docker/compose.yaml's `mlflow` service
                    "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(self.pg.port), "POSTGRES_USER": "mlflow",
                    "POSTGRES_DB": "mlflow", "POSTGRES_AUTH_DB": "mlflow_auth",
                    "POSTGRES_PASSWORD_FILE": str(secrets / "postgres_password"),
                    "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
                    "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(secrets / "mlflow_password"),
                    # what differs on a test machine
                    "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{self.port},localhost:{self.port}",
                    "MLFLOW_ARTIFACTS_DESTINATION": str(self.root / "artifacts"),
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        return env
