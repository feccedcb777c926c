"""The ``medcl`` command line. Each command is a thin shell over a pipeline or library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from medcl.config import ConfigError, load_config  # noqa: E402


def _cmd_demo(args) -> int:
    from pipelines.demo import run_demo

    cfg = load_config(args.config, args.overrides)
    summary = run_demo(cfg, Path(args.out), progress=not args.quiet)
    pre = summary["fewshot"]["pretrained"]
    rnd = summary["fewshot"]["random_init"]
    print("simulated pathology on real anatomy: not patient data")
    for k in pre:
        print(f"K={k:>2}  balanced accuracy  pretrained {pre[k]['balanced_accuracy']:.3f} "
              f"[{pre[k]['ci95'][0]:.3f}, {pre[k]['ci95'][1]:.3f}]   random init {rnd[k]['balanced_accuracy']:.3f} "
              f"[{rnd[k]['ci95'][0]:.3f}, {rnd[k]['ci95'][1]:.3f}]")
    print(f"report: {Path(args.out) / 'report.html'}\nsummary: {Path(args.out) / 'summary.json'}")
    print(f"model: {summary['mlflow']['fewshot_model_uri']} (tracking URI {summary['mlflow']['tracking_uri']})")
    return 0


def _cmd_ingest(args) -> int:
    from medcl.data.ingest import ingest

    cfg = load_config(args.config, args.overrides)
    res = ingest([Path(p) for p in args.src], Path(args.out), cfg.data,
                 labels_csv=Path(args.labels) if args.labels else None,
                 test_fraction=args.test_fraction, progress=not args.quiet)
    for path, reason in res.quarantined:
        print(f"{path}: {reason}", file=sys.stderr)
    print(json.dumps(res.counts()))
    return 0


def _cmd_pretrain(args) -> int:
    from pipelines.pretrain import run_pretrain

    cfg = load_config(args.config, args.overrides)
    out = run_pretrain(cfg, Path(args.cohort), Path(args.out), progress=not args.quiet)
    print(json.dumps({"run_id": out.run_id, "encoder_uri": out.encoder_uri,
                      "final_loss": out.result.losses[-1], "steps": out.result.steps}))
    return 0


def _cmd_predict(args) -> int:
    import mlflow

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_registry_uri(args.tracking_uri)
    model = mlflow.pyfunc.load_model(args.model)
    for scan in args.scans:
        try:
            row = model.predict([scan]).iloc[0]
        except Exception as exc:  # one bad scan must not stop the others
            print(f"{scan}: error: {exc}", file=sys.stderr)
            continue
        probs = {k: round(float(v), 4) for k, v in row.items() if k != "label"}
        print(json.dumps({"scan": scan, "label": row["label"], "probabilities": probs}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medcl", description="Contrastive pretraining of 3D MRI encoders and few-shot diagnosis, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, config=True):
        if config:
            sp.add_argument("--config", help="YAML config file (every key has a default)")
            sp.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("demo", help="simulated cohort -> pretraining -> few-shot evaluation -> report and registered models")
    d.add_argument("--out", required=True, help="output folder (report.html, summary.json, mlflow.db)")
    common(d)
    d.set_defaults(fn=_cmd_demo)

    i = sub.add_parser("ingest", help="NIfTI files or folders -> cohort cache (manifest.csv, quarantine.csv)")
    i.add_argument("src", nargs="+", help="files or folders to ingest")
    i.add_argument("--out", required=True, help="cohort folder")
    i.add_argument("--labels", help="CSV with columns subject,label")
    i.add_argument("--test-fraction", type=float, default=0.0, help="fraction of labelled subjects held out as the test split")
    common(i)
    i.set_defaults(fn=_cmd_ingest)

    t = sub.add_parser("pretrain", help="contrastive pretraining on a cohort, logged to MLflow")
    t.add_argument("--cohort", required=True, help="cohort folder made by 'medcl ingest'")
    t.add_argument("--out", required=True, help="output folder")
    common(t)
    t.set_defaults(fn=_cmd_pretrain)

    r = sub.add_parser("predict", help="class probabilities for NIfTI scans from a registered model")
    r.add_argument("--model", required=True, help="model URI, e.g. models:/medcl-fewshot@champion")
    r.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI)")
    r.add_argument("scans", nargs="+", help="NIfTI files")
    common(r, config=False)
    r.set_defaults(fn=_cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"medcl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
