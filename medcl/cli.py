"""The ``medcl`` command line. Each command is a thin shell over a pipeline or library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from medcl import tracking  # noqa: E402
from medcl.tracking import console  # noqa: E402
from medcl.config import ConfigError  # noqa: E402
from medcl.data.audit import audit, phi_values  # noqa: E402
from medcl.data.ingest import ingest  # noqa: E402
from medcl.pipelines.demo import run_demo  # noqa: E402
from medcl.pipelines.fewshot import run_fewshot, suggest_labels  # noqa: E402
from medcl.pipelines.pretrain import run_pretrain  # noqa: E402
from medcl.report import load_report_data  # noqa: E402
from medcl.report.content import seed_spread_lines  # noqa: E402
from medcl.report.files import write_report  # noqa: E402
from medcl.serving.explain import explain_scan, saliency_name  # noqa: E402
from medcl.serving.registry import promote  # noqa: E402
from medcl.serving.scan_input import trusted_paths  # noqa: E402
from medcl.train.checkpoint import CheckpointError  # noqa: E402
from medcl.validate import load_checked  # noqa: E402


# the demo's headline: pretraining against every baseline, one line per K
_DEMO_SOURCES = [("pretrained", "pretrained"), ("random_init", "random init"), ("raw_voxels", "raw voxels"),
                 ("radiomics", "radiomics"), ("scratch", "scratch")]


def _cmd_demo(args) -> int:
    cfg = load_checked(args.config, args.overrides)
    summary = run_demo(cfg, Path(args.out), _uri(args, Path(args.out)), progress=not args.quiet)
    fs = summary["fewshot"]
    print("simulated pathology on real anatomy: not patient data")
    cols = [(src, name) for src, name in _DEMO_SOURCES if src in fs]
    print(f"balanced accuracy [95% CI], {cfg.fewshot.primary_head} head (from scratch: its own head)")
    print(" " * 6 + "".join(f"{name:<22}" for _, name in cols))
    for k in fs["pretrained"]:
        cells = [f"{fs[src][k]['balanced_accuracy']:.3f} [{fs[src][k]['ci95'][0]:.3f}, {fs[src][k]['ci95'][1]:.3f}]"
                 if k in fs[src] else "-" for src, _ in cols]
        print(f"K={k:>2}  " + "".join(f"{c:<22}" for c in cells).rstrip())
    for line in seed_spread_lines(summary.get("seeds")):
        print(line)
    print(f"report: {Path(args.out) / 'report.html'}\nsummary: {Path(args.out) / 'summary.json'}")
    print(f"model: {summary['mlflow']['fewshot_model_uri']} (tracking URI {summary['mlflow']['tracking_uri']})")
    return 0


def _cmd_ingest(args) -> int:
    # argparse gives every positional to SRC: key=value words that are not paths are overrides
    overrides = [s for s in args.src if "=" in s and not Path(s).exists()]
    cfg = load_checked(args.config, args.overrides + overrides)
    try:
        res = ingest([Path(p) for p in args.src if p not in overrides], Path(args.out), cfg.data,
                     labels_csv=Path(args.labels) if args.labels else None,
                     test_fraction=args.test_fraction, progress=not args.quiet, shots=max(cfg.fewshot.shots))
    except ValueError as exc:  # an unreadable label CSV: one line, nothing written
        print(f"medcl: {exc}", file=sys.stderr)
        return 2
    for path, reason in res.quarantined + res.label_issues:
        print(f"{path}: {reason}", file=sys.stderr)
    print(json.dumps(res.counts()))
    print(f"manifest: {Path(args.out) / 'manifest.csv'}  quarantine: {Path(args.out) / 'quarantine.csv'}  "
          f"({res.seconds:.1f} s)")
    return 0


def _cmd_audit_phi(args) -> int:
    missing = [p for p in [args.output, *args.dicom] if not Path(p).exists()]
    if missing:
        print(f"medcl: {missing[0]}: no such file or folder", file=sys.stderr)
        return 2
    needles = phi_values([Path(p) for p in args.dicom])
    if not needles:
        print(f"medcl: no identifying values in the DICOM headers under {', '.join(args.dicom)} "
              f"(no DICOM files there, or already de-identified): nothing to look for", file=sys.stderr)
    hits = audit(Path(args.output), needles)
    for hit in hits:
        print(hit.line())
    fields = sorted(set(needles.values()))
    print(f"audit-phi: {len(needles)} identifying values from {len(fields)} header fields; "
          f"{len(hits)} hit(s) under {args.output}", file=sys.stderr)
    return 1 if hits else 0


def _cmd_pretrain(args) -> int:
    cfg = load_checked(args.config, args.overrides)
    try:
        out = run_pretrain(cfg, Path(args.cohort), Path(args.out), _uri(args, Path(args.out)), progress=not args.quiet,
                           register=not args.no_register, resume=args.resume)
    except CheckpointError as exc:
        print(f"medcl: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one line from rank 0
        print(json.dumps({"run_id": out.run_id, "encoder_uri": out.encoder_uri,
                          "final_loss": out.result.losses[-1] if out.result.losses else None,
                          "steps": out.result.steps}))
    return 0


def _cmd_predict(args) -> int:
    import mlflow

    _uri(args)
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except Exception as exc:  # MLflow raises many types: one line naming the URI
        print(f"medcl: {args.model}: cannot load the model ({_one_line(exc)})", file=sys.stderr)
        return 2
    if args.coverage is not None and not 0 < args.coverage < 1:
        print(f"medcl: --coverage must be in (0, 1), got {args.coverage}", file=sys.stderr)
        return 2
    failed = 0
    params = {"coverage": args.coverage} if args.coverage is not None else None
    for i, scan in enumerate(args.scans):
        try:
            with trusted_paths():   # the user's own files, named on the user's command line
                line = _prediction_line(scan, model.predict([scan], params=params).iloc[0])
            if args.explain:
                inner = model.unwrap_python_model()
                line["explanation"] = explain_scan(inner.encoder, inner.head, inner.meta, scan,
                                                   Path(args.explain) / saliency_name(i, scan), args.explain_method,
                                                   getattr(inner, "reference", None))
        except Exception as exc:  # one bad scan must not stop the others
            print(f"{scan}: error: {_one_line(exc)}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps(line))
    return 1 if failed else 0


def _prediction_line(scan: str, row) -> dict:
    """One scan's answer: label, probabilities, and the prediction set when the model gives one."""
    extra = ("label", "prediction_set", "coverage")
    line = {"scan": scan, "label": row["label"],
            "probabilities": {k: round(float(v), 4) for k, v in row.items() if k not in extra}}
    if "prediction_set" in row:
        line["prediction_set"] = [c for c in str(row["prediction_set"]).split("|") if c]
        line["coverage"] = float(row["coverage"])
    return line


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:300]


def _uri(args, out_dir: Path | None = None) -> str | None:
    """The tracking URI of this command, chosen once (``--tracking-uri``, else
    ``MLFLOW_TRACKING_URI``, else ``OUT/mlflow.db`` for a command with an output folder) and
    given to MLflow's client; the pipelines receive it as an argument."""
    uri = tracking.resolve_uri(args.tracking_uri, out_dir)
    if uri:
        tracking.check_access(uri)   # a wrong password stops the command here, in one line
        tracking.use_uri(uri)
    return uri


def _cmd_fewshot(args) -> int:
    overrides = list(args.overrides) + ([f"fewshot.shots=[{args.shots}]"] if args.shots else [])
    cfg = load_checked(args.config, overrides)
    try:
        summary = run_fewshot(cfg, Path(args.cohort), args.encoder, Path(args.out), _uri(args, Path(args.out)),
                              progress=not args.quiet)
    except ValueError as exc:
        print(f"medcl: {exc}", file=sys.stderr)
        return 2
    h = cfg.fewshot.primary_head
    for src, by_k in summary["fewshot"].items():
        for k, r in by_k.items():
            print(f"{src:<12} K={k:>2}  balanced accuracy {r['balanced_accuracy']:.3f} "
                  f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  ({h if src != 'scratch' else 'own head'})")
    print(f"report: {summary['report']['html']}" + (f"  pdf: {summary['report']['pdf']}" if summary['report']['pdf'] else ""))
    print(f"summary: {Path(args.out) / 'summary.json'}  run: {summary['mlflow']['fewshot_run_id']}")
    return 0


def _cmd_report(args) -> int:
    import tempfile

    src = Path(args.source)
    try:
        if src.exists():
            folder = src / "report_data" if (src / "report_data").is_dir() else src
            data = load_report_data(folder)
            out = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
        else:
            import mlflow

            _uri(args)
            tmp = Path(tempfile.mkdtemp(prefix="medcl-report-"))
            try:
                folder = Path(mlflow.artifacts.download_artifacts(run_id=args.source, artifact_path="report_data",
                                                                  dst_path=str(tmp)))
            except Exception as exc:
                print(f"medcl: {args.source}: not a report folder, and no run with report_data artifacts "
                      f"({_one_line(exc)})", file=sys.stderr)
                return 2
            data = load_report_data(folder)
            out = Path(args.out) if args.out else Path(f"report-{args.source}")
    except ValueError as exc:
        print(f"medcl: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    paths = write_report(data, out, pdf=not args.no_pdf)
    print(f"report: {paths['html']}" + (f"  pdf: {paths['pdf']}" if paths["pdf"] else ""))
    return 0


def _cmd_suggest_labels(args) -> int:
    import csv

    _uri(args)
    try:
        rows = suggest_labels(Path(args.cohort), args.encoder, args.k, args.method, args.seed, args.all)
    except ValueError as exc:
        print(f"medcl: {exc}", file=sys.stderr)
        return 2
    writer = csv.DictWriter(sys.stdout, fieldnames=["rank", "scan_key", "subject_key"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["rank", "scan_key", "subject_key"])
            w.writeheader()
            w.writerows(rows)
    return 0


def _cmd_promote(args) -> int:
    import mlflow

    if not _uri(args):
        print("medcl promote: set --tracking-uri or MLFLOW_TRACKING_URI (the registry to change)", file=sys.stderr)
        return 2
    try:
        changes = promote(args.model, args.version, args.alias)
    except mlflow.exceptions.MlflowException as exc:
        print(f"medcl promote: {args.model} version {args.version}: {exc.message}", file=sys.stderr)
        return 1
    for alias, (old, new) in changes.items():
        print(f"{args.model}@{alias}: version {old or '-'} -> {new or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medcl", description="Contrastive pretraining of 3D MRI encoders and few-shot diagnosis, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_and_training_commands(sub)
    _model_commands(sub)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="MLflow's own INFO lines, links and download bars too (default: medcl's lines and MLflow's warnings)")
    return p


def _uri_option(sp, what: str, out: bool = False) -> None:
    sp.add_argument("--tracking-uri", help=f"MLflow tracking/registry URI {what} (default: MLFLOW_TRACKING_URI"
                    + (", else OUT/mlflow.db)" if out else ")"))


def _common(sp, config=True):
    if config:
        sp.add_argument("--config", help="YAML config file (every key has a default)")
        sp.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_and_training_commands(sub) -> None:
    """demo, ingest, audit-phi, pretrain."""
    d = sub.add_parser("demo", help="simulated cohort -> pretraining -> few-shot evaluation -> report and registered models")
    d.add_argument("--out", required=True, help="output folder (report.html, summary.json, mlflow.db)")
    _common(d)
    _uri_option(d, "to log runs and register models to", out=True)
    d.set_defaults(fn=_cmd_demo)

    i = sub.add_parser("ingest", help="DICOM, NIfTI, BIDS or MedMNIST .npz files or folders -> cohort cache (manifest.csv, quarantine.csv)")
    i.add_argument("src", nargs="+", help="files or folders to ingest")
    i.add_argument("--out", required=True, help="cohort folder")
    i.add_argument("--labels", help="CSV with columns subject,label (or scan,label)")
    i.add_argument("--test-fraction", type=float, default=0.0, help="fraction of labelled subjects held out as the test split")
    _common(i)
    i.set_defaults(fn=_cmd_ingest)

    a = sub.add_parser("audit-phi", help="look for the identifying values of source DICOM headers in an output tree; exit 1 on any hit")
    a.add_argument("output", help="output folder to scan (cohort, run folder, MLflow store ...)")
    a.add_argument("--dicom", action="append", required=True, help="DICOM file or folder whose headers give the values (repeatable)")
    a.set_defaults(fn=_cmd_audit_phi)

    t = sub.add_parser("pretrain", help="contrastive pretraining on a cohort, logged to MLflow")
    t.add_argument("--cohort", required=True, help="cohort folder made by 'medcl ingest'")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT/pretrain/checkpoints/last.pt and its MLflow run (same config)")
    t.add_argument("--no-register", action="store_true", help="log the run but do not register the encoder")
    _common(t)
    _uri_option(t, "to log the run and register the encoder to", out=True)
    t.set_defaults(fn=_cmd_pretrain)


def _model_commands(sub) -> None:
    """predict, fewshot, report, suggest-labels, promote: commands that read registered models or runs."""
    r = sub.add_parser("predict", help="class probabilities for NIfTI scans or DICOM folders from a registered model")
    r.add_argument("--model", required=True, help="model URI, e.g. models:/medcl-fewshot@champion")
    _uri_option(r, "the model is read from")
    r.add_argument("scans", nargs="+", help="NIfTI files or DICOM folders (one series each)")
    r.add_argument("--explain", metavar="OUT", help="also write a saliency NIfTI per scan (the predicted class's score, "
                                                     "on the scan's own grid) into folder OUT")
    r.add_argument("--explain-method", choices=("occlusion", "gradcam", "gradient"), default="occlusion",
                   help="MONAI occlusion sensitivity (fine, slower), Grad-CAM on the encoder's last stage (coarse) "
                        "or the gradient's magnitude per voxel (fine, fast)")
    r.add_argument("--coverage", type=float, help="coverage of the prediction set printed beside the probabilities "
                                                   "(default 0.9; models registered with calibration scans)")
    _common(r, config=False)
    r.set_defaults(fn=_cmd_predict)

    fs = sub.add_parser("fewshot", help="few-shot evaluation of an encoder on a labelled cohort: every head and baseline, "
                                         "report.html/.pdf, summary.json, an MLflow run")
    fs.add_argument("--encoder", required=True, help="encoder model URI, e.g. models:/medcl-encoder@champion")
    fs.add_argument("--cohort", required=True, help="cohort folder made by 'medcl ingest --labels'")
    fs.add_argument("--shots", help="K values, e.g. 1,5,10 (default: fewshot.shots)")
    fs.add_argument("--out", required=True, help="output folder")
    _uri_option(fs, "the encoder is read from and the run logged to", out=True)
    _common(fs)
    fs.set_defaults(fn=_cmd_fewshot)

    rp = sub.add_parser("report", help="render report.html (and .pdf) again from a few-shot output folder or MLflow run id")
    rp.add_argument("source", metavar="RUN_ID_OR_DIR", help="output folder of 'medcl fewshot'/'medcl demo', or a run id")
    rp.add_argument("--out", help="where to write (default: the folder itself, or ./report-RUN_ID)")
    _uri_option(rp, "of the run")
    rp.add_argument("--no-pdf", action="store_true", help="HTML only")
    rp.set_defaults(fn=_cmd_report)

    sl = sub.add_parser("suggest-labels", help="the scans to label first (k-medoids or k-center in embedding space), "
                                               "one per subject, as CSV: rank,scan_key,subject_key")
    sl.add_argument("--cohort", required=True, help="cohort folder (unlabelled scans are the pool; all if none)")
    sl.add_argument("--encoder", required=True, help="encoder model URI, e.g. models:/medcl-encoder@champion")
    sl.add_argument("--k", type=int, required=True,
                    help="how many scans to suggest (the labelling budget: K shots x number of classes)")
    sl.add_argument("--method", choices=["kmedoids", "kcenter"], default="kmedoids")
    sl.add_argument("--all", action="store_true", help="choose among labelled scans too")
    sl.add_argument("--seed", type=int, default=0)
    sl.add_argument("--out", help="also write the list to this CSV file")
    _uri_option(sl, "the encoder is read from")
    sl.set_defaults(fn=_cmd_suggest_labels)

    m = sub.add_parser("promote", help="point an alias (champion, challenger) of a registered model at a version")
    m.add_argument("model", help="registered model name, e.g. medcl-fewshot")
    m.add_argument("version", help="model version number")
    m.add_argument("--alias", default="champion", help="alias to set (default: champion)")
    _uri_option(m, "whose registry to change")
    m.set_defaults(fn=_cmd_promote)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure(verbose=args.verbose)
    try:
        return args.fn(args)
    except (ConfigError, tracking.TrackingAuthError) as exc:
        print(f"medcl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
