"""Logging to MLflow that survives the server going away, and loses nothing.

Every tracking call becomes a *record* (create a run, a batch of metrics/params/tags, a text or
file artifact, end a run) executed by :class:`Tracker`:

1. while the server answers, a record is sent at once; a failure that may be transient
   (connection refused, timeout, HTTP 5xx or 429) is retried with exponential backoff
   (``MEDCL_TRACKING_RETRIES`` retries, first wait ``MEDCL_TRACKING_BACKOFF`` seconds, doubling);
2. when the retries run out, the tracker goes *offline*: this record and every later one are
   appended, in order, to the spool file (``OUT/mlflow-spool.jsonl``; file artifacts are copied
   next to it) and a :class:`TrackingWarning` says where it is. Training does not wait any more;
3. every ``MEDCL_TRACKING_PROBE`` seconds (doubling, at most 10 minutes) and when a run ends, the
   tracker tries to replay the spool in order. Once the whole spool is sent it is deleted and
   logging goes direct again;
4. a spool left behind by a process that ended while offline is replayed by the next
   :func:`medcl.tracking.setup` for the same output folder, or by hand with
   ``python -m medcl.tracking replay OUT/mlflow-spool.jsonl``.

Runs created while offline get a local id; their ``create_run`` record comes first in the spool,
so replay creates them (with their original start time and parent) before their metrics. Metric
timestamps are taken when the metric is logged, not when it is sent. A record the server rejects
for good (HTTP 4xx, e.g. a parameter logged twice with different values) is dropped with a warning
instead of blocking the spool.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

# MLflow's REST limits per log_batch request; records are cut to fit so that one record is one
# request, and a replay never half-sends a record.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
MAX_PROBE_SECONDS = 600.0


class TrackingWarning(UserWarning):
    """MLflow could not be reached or refused a record; training goes on."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def retry_policy() -> tuple[int, float, float]:
    """(retries, first backoff seconds, probe seconds) from the environment."""
    return (int(_env_float("MEDCL_TRACKING_RETRIES", 5)), _env_float("MEDCL_TRACKING_BACKOFF", 1.0),
            _env_float("MEDCL_TRACKING_PROBE", 30.0))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the server is unreachable, slow, overloaded or failing (5xx, 429)."""
    if isinstance(exc, MlflowException):
        try:
            status = exc.get_http_status_code()
        except Exception:
            status = 500
        return status >= 500 or status == 429
    try:
        import requests

        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            return exc.response.status_code >= 500 or exc.response.status_code == 429
        if isinstance(exc, requests.RequestException):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def http_status(uri: str, endpoint: str, timeout: float, **params) -> int | None:
    """The HTTP status of ``GET uri + endpoint`` through MLflow's own HTTP helper (same TLS
    settings and credentials as every other call, no retries); None when nothing answers, -1
    when this MLflow has no such helper (the caller then just tries)."""
    try:
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request
    except ImportError:  # pragma: no cover - moved in another MLflow version
        return -1
    try:
        return http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, timeout=timeout,
                            raise_on_status=False, params=params or None).status_code
    except Exception:
        return None


def call_with_retry(fn: Callable, retries: int, backoff: float, sleep: Callable[[float], None] = time.sleep):
    """``fn()``; on a transient error wait ``backoff``, ``2*backoff``, ... and try again,
    ``retries`` times at most. Permanent errors and the last transient one are raised."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == retries or not is_transient(exc):
                raise
            sleep(backoff * 2 ** attempt)


@dataclass
class RunHandle:
    """A run as medcl knows it: a local id always, the server's run id once it exists."""

    local_id: str
    name: str
    experiment: str
    run_id: str | None = None
    parent: "RunHandle | None" = None
    tags: dict = field(default_factory=dict)

    @property
    def info(self) -> str:
        return self.run_id or f"(not yet on the server, local id {self.local_id})"


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)] or [[]]


class Tracker:
    """Sends records to MLflow, spooling them to ``spool_path`` while the server is away."""

    def __init__(self, tracking_uri: str, spool_path: Path, artifact_location: str | None = None):
        self.tracking_uri = tracking_uri
        self.spool_path = Path(spool_path)
        self.spool_dir = self.spool_path.with_name(self.spool_path.stem + "-files")
        self.artifact_location = artifact_location
        self.experiment = "Default"
        self.lock = threading.RLock()
        self.handles: dict[str, RunHandle] = {}
        self.run_ids: dict[str, str] = {}
        self.experiment_ids: dict[str, str] = {}
        self.offline = self.spool_path.exists() and self.spool_path.stat().st_size > 0
        self.next_probe = 0.0
        self.probe_wait = retry_policy()[2]
        self.dropped = 0
        self.replayed = 0

    # -- the client -----------------------------------------------------------------------
    @property
    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.tracking_uri, self.tracking_uri)

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        if name not in self.experiment_ids:
            exp = self.client.get_experiment_by_name(name)
            self.experiment_ids[name] = exp.experiment_id if exp is not None else \
                self.client.create_experiment(name, artifact_location=artifact_location)
        return self.experiment_ids[name]

    def _run_id(self, rec: dict) -> str:
        run_id = rec.get("run_id") or self.run_ids.get(rec["run"])
        if run_id is None:
            raise MlflowException(f"run {rec['run']} was never created on the server", error_code=RESOURCE_DOES_NOT_EXIST)
        return run_id

    # -- records --------------------------------------------------------------------------
    def _execute(self, rec: dict) -> None:
        op = rec["op"]
        c = self.client
        if op == "create_run":
            tags = dict(rec["tags"])
            parent = rec.get("parent_run_id") or (self.run_ids.get(rec["parent"]) if rec.get("parent") else None)
            if rec.get("parent") and parent is None:
                raise MlflowException(f"parent run {rec['parent']} was never created", error_code=RESOURCE_DOES_NOT_EXIST)
            if parent:
                tags["mlflow.parentRunId"] = parent
            run = c.create_run(self._experiment_id(rec["experiment"], rec.get("artifact_location")),
                               start_time=rec["ts"], tags=tags, run_name=rec["name"])
            self.run_ids[rec["run"]] = run.info.run_id
            if rec["run"] in self.handles:
                self.handles[rec["run"]].run_id = run.info.run_id
        elif op == "log_batch":
            c.log_batch(self._run_id(rec),
                        metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in rec.get("metrics", [])],
                        params=[Param(k, v) for k, v in rec.get("params", {}).items()],
                        tags=[RunTag(k, v) for k, v in rec.get("tags", {}).items()])
        elif op == "text":
            c.log_text(self._run_id(rec), rec["text"], rec["artifact_file"])
        elif op == "artifact":
            path = Path(rec["path"])
            if path.is_dir():
                c.log_artifacts(self._run_id(rec), str(path), rec.get("artifact_path"))
            else:
                c.log_artifact(self._run_id(rec), str(path), rec.get("artifact_path"))
        elif op == "end_run":
            c.set_terminated(self._run_id(rec), rec["status"], end_time=rec["ts"])
        else:
            raise MlflowException(f"unknown spool record op {op!r}", error_code=INVALID_PARAMETER_VALUE)

    def _spool_copy(self, rec: dict) -> dict:
        """An artifact record whose file lives in the spool folder (the source may change)."""
        if rec["op"] != "artifact" or rec.get("spooled"):
            return rec
        src = Path(rec["path"])
        dest = self.spool_dir / uuid.uuid4().hex / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
        return {**rec, "path": str(dest), "spooled": True}

    def _append(self, rec: dict) -> None:
        rec = self._spool_copy(rec)
        if rec.get("run") in self.run_ids and not rec.get("run_id"):
            rec = {**rec, "run_id": self.run_ids[rec["run"]]}
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _read_spool(self) -> list[dict]:
        if not self.spool_path.exists():
            return []
        out = []
        for n, line in enumerate(self.spool_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write: only the last can be
                warnings.warn(f"{self.spool_path}:{n}: unreadable spool line skipped", TrackingWarning, stacklevel=2)
        return out

    def _write_spool(self, records: list[dict]) -> None:
        tmp = self.spool_path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                if rec.get("run") in self.run_ids and not rec.get("run_id"):
                    rec = {**rec, "run_id": self.run_ids[rec["run"]]}
                if rec.get("parent") in self.run_ids and not rec.get("parent_run_id"):
                    rec = {**rec, "parent_run_id": self.run_ids[rec["parent"]]}
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.spool_path)

    def _drop(self, rec: dict, exc: BaseException) -> None:
        self.dropped += 1
        warnings.warn(f"MLflow refused a '{rec['op']}' record for run {rec.get('run_id') or rec.get('run')}, "
                      f"it is dropped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      TrackingWarning, stacklevel=4)

    # -- public ---------------------------------------------------------------------------
    def submit(self, rec: dict) -> None:
        """Send ``rec`` now (with retries), or spool it if MLflow is away. Never raises."""
        with self.lock:
            if self.offline:
                try:
                    self._append(rec)
                except OSError as exc:
                    warnings.warn(f"cannot write the MLflow spool {self.spool_path} ({exc}); a '{rec['op']}' "
                                  "record is lost", TrackingWarning, stacklevel=3)
                self.maybe_replay()
                return
            retries, backoff, _ = retry_policy()
            try:
                call_with_retry(lambda: self._execute(rec), retries, backoff)
            except Exception as exc:
                if not is_transient(exc):
                    self._drop(rec, exc)
                    return
                self._go_offline(exc, retries)
                try:
                    self._append(rec)
                except OSError as err:
                    warnings.warn(f"cannot write the MLflow spool {self.spool_path} ({err}); a '{rec['op']}' "
                                  "record is lost", TrackingWarning, stacklevel=3)

    def _go_offline(self, exc: BaseException, retries: int) -> None:
        self.offline = True
        self.probe_wait = retry_policy()[2]
        self.next_probe = time.monotonic() + self.probe_wait
        warnings.warn(
            f"MLflow at {self.tracking_uri} is unreachable after {retries} retries "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). Training goes on; "
            f"everything it logs is kept in {self.spool_path} and sent when the server answers again "
            f"(or run: python -m medcl.tracking replay {self.spool_path}).", TrackingWarning, stacklevel=4)

    def maybe_replay(self, force: bool = False) -> bool:
        """Try to replay the spool if it is time (or ``force``); True when nothing is left."""
        with self.lock:
            if not self.offline:
                return True
            if not force and time.monotonic() < self.next_probe:
                return False
            if self.reachable() and self.replay():
                return True
            self.probe_wait = min(self.probe_wait * 2, MAX_PROBE_SECONDS)
            self.next_probe = time.monotonic() + self.probe_wait
            return False

    def reachable(self, timeout: float = 5.0) -> bool:
        """A quick look before a replay, so that a server that swallows packets costs seconds,
        not a request timeout per probe: ``GET /health`` for HTTP servers; other stores: True."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return True
        return http_status(self.tracking_uri, "/health", timeout) in (200, -1)

    def replay(self) -> bool:
        """Send the spooled records in order; stop at the first transient failure and keep the
        rest. True (and the spool deleted) when everything was sent or dropped."""
        with self.lock:
            records = self._read_spool()
            for i, rec in enumerate(records):
                try:
                    self._execute(rec)
                    self.replayed += 1
                except Exception as exc:
                    if is_transient(exc):
                        self._write_spool(records[i:])
                        return False
                    self._drop(rec, exc)
                if rec["op"] == "artifact" and rec.get("spooled"):
                    shutil.rmtree(Path(rec["path"]).parent, ignore_errors=True)
            if records:
                warnings.warn(f"MLflow at {self.tracking_uri} answers again: {len(records)} spooled records from "
                              f"{self.spool_path} were replayed", TrackingWarning, stacklevel=3)
            self.spool_path.unlink(missing_ok=True)
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            self.offline = False
            return True

    def pending(self) -> int:
        with self.lock:
            return len(self._read_spool()) if self.offline else 0

    def online(self, fn: Callable, what: str):
        """Run ``fn()`` against the server (with retries) if it is reachable; returns
        ``(True, result)`` or ``(False, exception)``: for calls that cannot be spooled."""
        with self.lock:
            if self.offline and not self.maybe_replay(force=True):
                return False, MlflowException(f"MLflow at {self.tracking_uri} is unreachable (spool not yet replayed)")
            retries, backoff, _ = retry_policy()
            try:
                return True, call_with_retry(fn, retries, backoff)
            except Exception as exc:
                if is_transient(exc):
                    self._go_offline(exc, retries)
                return False, exc

    # -- records for the public API ---------------------------------------------------------
    def create_run(self, name: str, experiment: str, tags: dict, parent: RunHandle | None) -> RunHandle:
        handle = RunHandle(uuid.uuid4().hex, name, experiment, parent=parent, tags=dict(tags))
        self.handles[handle.local_id] = handle
        rec = {"op": "create_run", "run": handle.local_id, "name": name, "experiment": experiment,
               "artifact_location": self.artifact_location, "tags": {k: str(v) for k, v in tags.items()},
               "ts": int(time.time() * 1000)}
        if parent is not None:
            rec["parent"] = parent.local_id
            if parent.run_id:
                rec["parent_run_id"] = parent.run_id
        self.submit(rec)
        return handle

    def _rec(self, op: str, run: RunHandle, **kw) -> dict:
        rec = {"op": op, "run": run.local_id, **kw}
        if run.run_id:
            rec["run_id"] = run.run_id
        return rec

    def log_batch(self, run: RunHandle, metrics: dict | None = None, step: int = 0,
                  params: dict | None = None, tags: dict | None = None, timestamp: int | None = None) -> None:
        """``timestamp`` (ms): when the metrics were logged, if not now (a background writer)."""
        ts = int(time.time() * 1000) if timestamp is None else int(timestamp)
        m = [[k, float(v), ts, int(step)] for k, v in (metrics or {}).items()]
        p = [(k, str(v)[:6000]) for k, v in (params or {}).items()]
        t = [(k, str(v)) for k, v in (tags or {}).items()]
        for chunk in _chunks(m, MAX_METRICS):
            if chunk:
                self.submit(self._rec("log_batch", run, metrics=chunk))
        for chunk in _chunks(p, MAX_PARAMS):
            if chunk:
                self.submit(self._rec("log_batch", run, params=dict(chunk)))
        for chunk in _chunks(t, MAX_TAGS):
            if chunk:
                self.submit(self._rec("log_batch", run, tags=dict(chunk)))

    def log_text(self, run: RunHandle, text: str, artifact_file: str) -> None:
        self.submit(self._rec("text", run, text=text, artifact_file=artifact_file))

    def log_artifact(self, run: RunHandle, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            warnings.warn(f"artifact {path} does not exist; not logged", TrackingWarning, stacklevel=3)
            return
        self.submit(self._rec("artifact", run, path=str(path.resolve()), artifact_path=artifact_path))

    def end_run(self, run: RunHandle, status: str) -> None:
        self.submit(self._rec("end_run", run, status=status, ts=int(time.time() * 1000)))
        with self.lock:
            if self.offline and not self.maybe_replay(force=True):
                warnings.warn(
                    f"MLflow at {self.tracking_uri} is still unreachable: run '{run.name}' ({run.info}) and "
                    f"{self.pending()} records are kept in {self.spool_path}. They are sent the next time medcl "
                    f"logs to this output folder, or now with: python -m medcl.tracking replay {self.spool_path}",
                    TrackingWarning, stacklevel=3)
