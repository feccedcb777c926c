"""Metric logging off the training thread: :class:`BackgroundLog` queues each ``log_metrics``
call and one writer thread sends them, in order, through the :class:`~medcl.tracking.spool.Tracker`.

A blocking MLflow ``log_batch`` (an HTTP request to a server) on rank 0 would hold every rank
at the next collective; queued, it costs the training thread a ``put``. The spool's guarantees
hold unchanged: one writer thread sends the records in the order they were logged; each metric
keeps the time it was logged at (not sent at); the tracker's retry, spool and replay run in the
writer thread; and :meth:`BackgroundLog.close` returns only once every queued record is sent or
spooled, so nothing is lost when the loop ends (the loop closes it before its run ends, also
when training fails).
"""

from __future__ import annotations

import queue
import threading
import time
import warnings

from medcl.tracking.spool import RunHandle, TrackingWarning

_STOP = object()


class BackgroundLog:
    """``log_metrics(metrics, step)`` to a run, sent by a writer thread. ``target`` resolves the
    (tracker, run) a call goes to, at the call (:func:`medcl.tracking._target`); None: dropped,
    as :func:`medcl.tracking.log_metrics` does without a run."""

    def __init__(self, target):
        self.target = target
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._drain, name="medcl-mlflow-writer", daemon=True)
        self.thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int, run: RunHandle | None = None) -> None:
        where = self.target(run)
        if where is not None:
            self.queue.put((where, dict(metrics), int(step), int(time.time() * 1000)))

    def _drain(self) -> None:
        while (item := self.queue.get()) is not _STOP:
            (tracker, run), metrics, step, ts = item
            try:
                tracker.log_batch(run, metrics=metrics, step=step, timestamp=ts)
            except Exception as exc:   # the tracker never raises; a bug here must not kill the writer
                warnings.warn(f"metrics of step {step} not logged: {type(exc).__name__}: {exc}", TrackingWarning,
                              stacklevel=2)

    def pending(self) -> int:
        return self.queue.qsize()

    def close(self) -> None:
        """Send (or spool) everything queued, then stop the writer."""
        if self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join()
