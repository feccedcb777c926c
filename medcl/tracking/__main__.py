"""``python -m medcl.tracking replay OUT/mlflow-spool.jsonl [--tracking-uri URI]``: send what a
run spooled while MLflow was unreachable. The URI defaults to ``MLFLOW_TRACKING_URI``, else the
sqlite store next to the spool (``OUT/mlflow.db``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from medcl.tracking import client_environment, resolve_uri  # noqa: E402
from medcl.tracking.spool import Tracker  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medcl.tracking")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="send a spool file to MLflow")
    r.add_argument("spool", help="the spool file, e.g. out/run/mlflow-spool.jsonl")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else OUT/mlflow.db)")
    args = p.parse_args(argv)

    spool = Path(args.spool).resolve()
    if not spool.exists():
        print(f"{spool}: no such spool file (nothing to replay)", file=sys.stderr)
        return 1
    client_environment()
    uri = resolve_uri(args.tracking_uri, spool.parent)
    tracker = Tracker(uri, spool)   # each spooled create_run carries its own artifact location
    n = len(tracker._read_spool())
    if tracker.replay():
        print(f"replayed {n} records from {spool} to {uri} ({tracker.dropped} refused by the server)")
        return 0
    print(f"{uri} is still unreachable; {tracker.pending()} records remain in {spool}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
