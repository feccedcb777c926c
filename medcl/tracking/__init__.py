"""MLflow: where runs go, and logging that never kills training and never loses a metric.

The default store is sqlite in the output folder (``sqlite:///OUT/mlflow.db``, artifacts in
``OUT/mlartifacts``), so no server is needed; ``MLFLOW_TRACKING_URI`` points medcl at a
server instead (with ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``, or
``MLFLOW_TRACKING_PASSWORD_FILE`` for a docker secret, when it has basic auth).

Usage::

    tracking.setup(uri, "medcl-pretrain", out_dir)
    with tracking.start_run("pretrain-simclr", tags={...}) as run:   # environment logged here
        tracking.log_params({...})
        tracking.log_metrics({"loss": 1.2}, step=0)                   # retried, or spooled
        with tracking.start_run("child", nested=True):                # mlflow.parentRunId
            ...

Each top-level run also logs MLflow's system metrics (``system/cpu_utilization_percentage``,
GPU utilisation and memory where ``nvidia-ml-py`` finds GPUs, ...) through the same path. See
:mod:`medcl.tracking.spool` for what happens when the server is away.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402

from medcl.tracking.background import BackgroundLog  # noqa: E402
from medcl.tracking.environment import environment, environment_tags  # noqa: E402
from medcl.tracking.spool import (RunHandle, Tracker, TrackingWarning, call_with_retry, http_status,  # noqa: E402
                                  is_transient)
from medcl.tracking.system_metrics import start_monitor  # noqa: E402

__all__ = ["BackgroundLog", "background_log", "setup", "check_access", "TrackingAuthError", "resolve_uri", "default_uri", "use_uri", "start_run", "current_run", "log_metrics", "log_params", "set_tags",
           "log_dict", "log_text", "log_artifact", "log_fewshot_evaluation", "tracker", "spool_path_for", "RunHandle", "TrackingWarning",
           "call_with_retry", "is_transient"]

SPOOL_NAME = "mlflow-spool.jsonl"

# medcl's own HTTP retry (with backoff, then spool) replaces MLflow's, which would block a
# training step for minutes on a dead server. Set these yourself to override.
# (The timeout is per socket operation, not per request: a long upload that progresses is fine.)
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}

_tracker: Tracker | None = None
_stack: list[RunHandle] = []


def default_uri(out_dir: Path) -> str:
    """The local store of an output folder: ``sqlite:///OUT/mlflow.db``."""
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def resolve_uri(explicit: str | None, out_dir: Path | None = None) -> str | None:
    """THE choice of the tracking URI, made once per command by the CLI: ``--tracking-uri``,
    else ``MLFLOW_TRACKING_URI``, else the output folder's sqlite store (None for a command
    without an output folder). Everything below the CLI receives the result as an argument."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return default_uri(out_dir) if out_dir is not None else None


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def spool_path_for(out_dir: Path) -> Path:
    return Path(out_dir).resolve() / SPOOL_NAME


def _credentials_from_file() -> None:
    """``MLFLOW_TRACKING_PASSWORD_FILE`` (a docker secret) fills ``MLFLOW_TRACKING_PASSWORD``."""
    path = os.environ.get("MLFLOW_TRACKING_PASSWORD_FILE")
    if path and not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        try:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = Path(path).read_text().strip()
        except OSError as exc:
            warnings.warn(f"MLFLOW_TRACKING_PASSWORD_FILE={path}: cannot read ({exc.strerror})", TrackingWarning,
                          stacklevel=3)


def client_environment() -> None:
    """medcl's HTTP defaults (no MLflow retry loop: medcl retries and spools itself) and the
    password from ``MLFLOW_TRACKING_PASSWORD_FILE``; what the user set is kept."""
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    _credentials_from_file()


class TrackingAuthError(Exception):
    """The tracking server refused medcl's credentials. Unlike an outage this is not waited
    out or spooled: the command stops with this one line."""


def check_access(uri: str, timeout: float = 10.0) -> None:
    """One request to an HTTP tracking server with the credentials MLflow's client will use;
    :class:`TrackingAuthError` if it answers 401 or 403. A server that does not answer passes:
    that is an outage, which logging rides out (:mod:`medcl.tracking.spool`)."""
    if not uri.startswith(("http://", "https://")):
        return
    client_environment()
    status = http_status(uri, "/api/2.0/mlflow/experiments/get", timeout, experiment_id="0")
    if status in (401, 403):
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user {user!r}" if user else "a request without credentials (no MLFLOW_TRACKING_USERNAME)"
        raise TrackingAuthError(f"MLflow at {uri} refused {who} (HTTP {status}): check MLFLOW_TRACKING_USERNAME and "
                                f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_PASSWORD_FILE)")


def use_uri(uri: str) -> None:
    """Point MLflow's client (tracking and registry) at ``uri`` without changing this process's
    environment (``mlflow.set_tracking_uri`` and ``set_registry_uri`` also export
    ``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI``; medcl puts both back, so that a later
    :func:`resolve_uri`, and any subprocess, sees only what the user set)."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in names}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def setup(uri: str, experiment: str, out_dir: Path) -> str:
    """Point MLflow at ``uri`` (see :func:`resolve_uri`), select ``experiment`` (runs started with
    :func:`start_run` go there) and replay a spool left in ``out_dir`` by an earlier process.
    A local store keeps its artifacts in ``OUT/mlartifacts``; a server decides for itself.
    Returns ``uri``."""
    global _tracker
    client_environment()
    location = None if is_server(uri) else (Path(out_dir).resolve() / "mlartifacts").as_uri()
    use_uri(uri)
    spool = spool_path_for(out_dir)
    if _tracker is None or _tracker.tracking_uri != uri or _tracker.spool_path != spool:
        _tracker = Tracker(uri, spool, location)
    _tracker.experiment = experiment
    if _tracker.offline:
        _tracker.maybe_replay(force=True)
    if not _tracker.offline:
        ok, _ = _tracker.online(lambda: _tracker._experiment_id(experiment, location), "experiment")
        if ok:
            mlflow.set_experiment(experiment)
    return uri


def tracker() -> Tracker | None:
    return _tracker


def current_run() -> RunHandle | None:
    return _stack[-1] if _stack else None


@contextmanager
def start_run(run_name: str, tags: dict | None = None, nested: bool = False, experiment: str | None = None,
              system_metrics: bool | None = None, log_environment: bool = True):
    """A run in the experiment chosen by :func:`setup` (or ``experiment``); ``nested`` makes it a
    child of the current run. Ends FINISHED, or FAILED (KILLED on Ctrl-C) if the block raises.
    Logs the environment (tags + ``environment.json``) and, for top-level runs, system metrics
    (off with ``system_metrics=False`` or ``MEDCL_SYSTEM_METRICS=false``)."""
    if _tracker is None:
        raise RuntimeError("medcl.tracking.setup(uri, experiment, out_dir) must be called before start_run")
    parent = current_run() if nested else None
    env = None
    if log_environment:
        try:
            env = environment()
        except Exception as exc:  # a broken driver or package metadata must not stop training
            warnings.warn(f"environment not recorded: {type(exc).__name__}: {exc}", TrackingWarning, stacklevel=3)
    all_tags = {"medcl.run_name": run_name, "mlflow.source.type": "LOCAL", "mlflow.source.name": "medcl",
                **(environment_tags(env) if env else {}), **(tags or {})}
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user:
        all_tags.setdefault("mlflow.user", user)
    handle = _tracker.create_run(run_name, experiment or _tracker.experiment, all_tags, parent)
    _stack.append(handle)
    monitor = None
    if system_metrics is None:
        system_metrics = parent is None and os.environ.get("MEDCL_SYSTEM_METRICS", "true").lower() not in ("0", "false", "no")
    if system_metrics:
        monitor = start_monitor(_tracker, handle)
    status = "FINISHED"
    try:
        if env is not None:
            _tracker.log_text(handle, json.dumps(env, indent=2), "environment.json")
        yield handle
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        _stack.remove(handle)
        _tracker.end_run(handle, status)


def _target(run: RunHandle | None) -> tuple[Tracker, RunHandle] | None:
    """The tracker and run a call goes to: ``run``, the current medcl run, or a plain
    ``mlflow.start_run()`` run (for code that manages its own runs)."""
    global _tracker
    run = run or current_run()
    if run is not None and _tracker is not None:
        return _tracker, run
    active = mlflow.active_run()
    if active is None:
        return None
    if _tracker is None or _tracker.tracking_uri != mlflow.get_tracking_uri():
        _tracker = Tracker(mlflow.get_tracking_uri(), Path.cwd() / SPOOL_NAME)
    handle = _tracker.handles.get(active.info.run_id)
    if handle is None:
        handle = RunHandle(active.info.run_id, active.info.run_name or "", "", run_id=active.info.run_id)
        _tracker.handles[handle.local_id] = handle
        _tracker.run_ids[handle.local_id] = handle.run_id
    return _tracker, handle


def log_metrics(metrics: dict[str, float], step: int, run: RunHandle | None = None) -> None:
    if (t := _target(run)) is not None:
        t[0].log_batch(t[1], metrics=metrics, step=step)


def background_log() -> BackgroundLog:
    """A :class:`~medcl.tracking.background.BackgroundLog`: ``log_metrics`` as above, sent by a
    writer thread (close it before the run ends)."""
    return BackgroundLog(_target)


def log_params(params: dict, run: RunHandle | None = None) -> None:
    if (t := _target(run)) is not None:
        t[0].log_batch(t[1], params={k: str(v)[:500] for k, v in params.items()})


def set_tags(tags: dict, run: RunHandle | None = None) -> None:
    if (t := _target(run)) is not None:
        t[0].log_batch(t[1], tags=tags)


def log_text(text: str, artifact_file: str, run: RunHandle | None = None) -> None:
    if (t := _target(run)) is not None:
        t[0].log_text(t[1], text, artifact_file)


def log_dict(obj: dict, artifact_file: str, run: RunHandle | None = None) -> None:
    """As ``mlflow.log_dict``: YAML for ``.yaml``/``.yml`` files, else JSON."""
    if artifact_file.endswith((".yaml", ".yml")):
        import yaml

        text = yaml.safe_dump(obj, sort_keys=False)
    else:
        text = json.dumps(obj, indent=2)
    log_text(text, artifact_file, run)


def log_artifact(path: Path, artifact_path: str | None = None, run: RunHandle | None = None) -> None:
    if (t := _target(run)) is not None:
        t[0].log_artifact(t[1], Path(path), artifact_path)


def log_fewshot_evaluation(results: dict, params: dict | None = None) -> None:
    """Episodic few-shot results (``encoder -> head -> K -> metrics``, as
    :func:`medcl.fewshot.evaluate.evaluate_episodes` returns them) as one nested run per
    encoder, head and shot count (params ``encoder``, ``head``, ``shots`` and ``params``;
    metrics ``balanced_accuracy``, ``ci95_lo``/``ci95_hi``, ``accuracy`` and its CI), plus
    ``ENC.HEAD.*`` curves with step K on the current run."""
    for enc, heads in results.items():
        for head, shots in heads.items():
            for k, r in shots.items():
                metrics = {"balanced_accuracy": r["balanced_accuracy"], "ci95_lo": r["ci95"][0], "ci95_hi": r["ci95"][1]}
                if "accuracy" in r:
                    metrics.update({"accuracy": r["accuracy"], "accuracy_ci95_lo": r["accuracy_ci95"][0],
                                    "accuracy_ci95_hi": r["accuracy_ci95"][1]})
                log_metrics({f"{enc}.{head}.{m}": v for m, v in metrics.items()}, int(k))
                with start_run(f"{enc}/{head}/{k}-shot", nested=True, log_environment=False,
                               tags={"medcl.encoder": enc, "medcl.head": head, "medcl.shots": str(k)}):
                    log_params({"encoder": enc, "head": head, "shots": k, "n_episodes": r.get("n_episodes", ""),
                                **(params or {})})
                    log_metrics(metrics, int(k))
