"""MLflow's system metrics (CPU, memory, disk, network, and GPU through ``nvidia-ml-py``),
sent through medcl's tracker so that they are retried and spooled like every other metric.

MLflow's own monitor stops for good at the first failed request and asks the server every
sample whether the run still runs; this one keeps MLflow's collectors and aggregation and
changes only where the numbers go. The interval is MLflow's
(``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, default 10 s, and
``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING``).
"""

from __future__ import annotations

import logging
import warnings

from medcl.tracking.spool import RunHandle, Tracker, TrackingWarning

_log = logging.getLogger(__name__)


class _ToTracker:
    """Stands in for MLflow's BatchMetricsLogger."""

    def __init__(self, tracker: Tracker, run: RunHandle):
        self.tracker, self.run = tracker, run
        self.data: list = []
        self.total_training_time = self.total_log_batch_time = 0.0

    def record_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.tracker.log_batch(self.run, metrics=metrics, step=step or 0)

    def flush(self) -> None:
        """Nothing buffered here: every record goes to the tracker at once (its spool buffers)."""


def start_monitor(tracker: Tracker, run: RunHandle):
    """Start sampling system metrics into ``run``; returns an object with ``finish()``, or
    None (with a warning) when MLflow's collectors cannot run here (``psutil`` missing)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:
        warnings.warn(f"system metrics are not logged: {exc} (pip install psutil)", TrackingWarning, stacklevel=3)
        return None

    class Monitor(SystemMetricsMonitor):
        def monitor(self):
            try:
                while not self._shutdown_event.is_set():
                    for _ in range(self.samples_before_logging):
                        self.collect_metrics()
                        if self._shutdown_event.wait(self.sampling_interval):
                            break
                    metrics = self.aggregate_metrics()
                    if metrics:
                        self.publish_metrics(metrics)
            except Exception as exc:  # a collector failing must not take anything else down
                warnings.warn(f"system metrics stopped: {type(exc).__name__}: {exc}", TrackingWarning, stacklevel=2)

    try:
        mon = Monitor(run_id=run.run_id or run.local_id, tracking_uri=tracker.tracking_uri)
    except Exception as exc:
        warnings.warn(f"system metrics are not logged: {type(exc).__name__}: {exc}", TrackingWarning, stacklevel=3)
        return None
    mon.mlflow_logger = _ToTracker(tracker, run)
    mon.start()
    return mon
