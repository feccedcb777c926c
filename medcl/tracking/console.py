"""What MLflow and Python print on a medcl command's console.

By default a command shows medcl's own lines and progress bars (one per stage) and MLflow's
warnings and errors, nothing else of MLflow's: no INFO log lines ("Waiting up to 300 seconds
..."), no "Successfully registered model" / "Created version" lines, no "View run at" links, no
"Downloading artifacts" progress bars. Every distinct warning is shown once. ``--verbose``
leaves MLflow as it is.

What the user set in the environment wins (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``,
``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``, ``MLFLOW_LOGGING_LEVEL``).
"""

from __future__ import annotations

import logging
import os
import warnings

from mlflow.utils import logging_utils

__all__ = ["configure"]

QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def configure(verbose: bool = False) -> None:
    """Set the console of this process (and, through the environment, MLflow's in the processes
    it starts) for a command."""
    warnings.simplefilter("once", append=True)   # after every filter libraries and users set
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    if verbose:
        stream.__dict__.pop("write", None)
        stream.__dict__.pop("flush", None)
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # MLflow's status lines are print()s to one stream (mlflow.utils.logging_utils.eprint) that its
    # loggers write to as well. That stream discards what it is given (MLflow's own switch,
    # disable_logging(), is switched on again by MLflow itself); MLflow's loggers get a stream of
    # their own, for warnings and errors.
    stream.write = _discard
    stream.flush = _discard
    handler = logging.StreamHandler(logging_utils.MlflowLoggingStream())   # sys.stderr at each write
    handler.setFormatter(logging.Formatter(logging_utils.LOGGING_LINE_FORMAT, logging_utils.LOGGING_DATETIME_FORMAT))
    logger = logging.getLogger("mlflow")
    logger.handlers = [handler]
    level = (os.environ.get("MLFLOW_LOGGING_LEVEL") or "WARNING").upper()
    logger.setLevel(level if isinstance(logging.getLevelName(level), int) else "WARNING")
    logger.propagate = False


def _discard(*_args) -> None:
    return None
