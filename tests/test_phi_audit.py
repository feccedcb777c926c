"""No patient identifier leaves ingest: identifiers planted in 18 DICOM header fields are found
nowhere in the outputs of ingest, pretraining (MLflow store included), few-shot evaluation, the
report or the logs, by ``medcl audit-phi``; and the audit does find them when they are there."""

from __future__ import annotations

import json
import logging
import os
import warnings

import mlflow
import numpy as np
import pytest

from medcl import tracking
from medcl.cli import main
from medcl.config import config_to_dict, load_config
from medcl.data.audit import PHI_FIELDS, audit, phi_values
from medcl.data.cohort import Cohort
from dicomwrite import mni_block, write_series
from medcl.data.ingest import ingest

TINY = ["data.spacing=6.0", "data.workers=1", "augment.view_size=16", "model.widen_factor=0.25", "train.epochs=1",
        "train.batch_size=4", "train.num_workers=0", "fewshot.shots=[1]", "fewshot.n_episodes=5",
        "fewshot.n_query=1", "fewshot.heads=prototype", "fewshot.primary_head=prototype"]


def identity(i: int) -> dict:
    """Identifying values in 18 header fields, different for every patient."""
    return {
        "PatientName": f"Zebedee{i}^Quixote^Xavier", "PatientID": f"MRN{731900 + i}",
        # patient 0's birth date is not a valid date (still an identifier the audit must know)
        "PatientBirthDate": f"1958031{i}" if i else "19580399", "PatientAddress": f"{12 + i} Harbour Lane Wexford",
        "OtherPatientIDs": f"ALT{55120 + i}", "PatientTelephoneNumbers": f"0039 6 5550{i}17",
        "AccessionNumber": f"ACC{880420 + i}", "StudyID": f"STY{4410 + i}",
        "InstitutionName": f"Saint Ignatius Infirmary {i}", "InstitutionAddress": f"{i} Cloister Road Bruges",
        "ReferringPhysicianName": f"Oyelaran{i}^Babatunde", "OperatorsName": f"Halvorsen{i}^Sigrid",
        "StationName": f"MRSTN{i}QX", "DeviceSerialNumber": f"SN{90817 + i}",
        "StudyDate": f"2019041{i}", "SeriesDate": f"2019052{i}", "AcquisitionDate": f"2019062{i}",
        "ContentDate": f"2019071{i}",
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """8 patients (two classes), one T1 DICOM series each, and a labels CSV keyed by PatientID."""
    root = tmp_path_factory.mktemp("phi")
    vol, aff = mni_block(step=4, box=(slice(2, 46), slice(2, 56), slice(4, 44)))
    rng = np.random.default_rng(0)
    rows = ["subject,label"]
    for i in range(8):
        scale = rng.uniform(0.8, 1.2)
        noisy = vol * scale + rng.normal(0, 2, vol.shape).astype(np.float32)
        write_series(noisy, aff, root / "dicom" / f"case{i}" / "t1", identity=identity(i))
        rows.append(f"MRN{731900 + i},{'lesion' if i % 2 else 'healthy'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_planted_identifiers_cover_at_least_12_fields(sources):
    needles = phi_values([sources / "dicom"])
    fields = set(needles.values())
    assert len(fields) >= 12 and fields <= set(PHI_FIELDS)
    for form in ("Zebedee3", "MRN731903", "1958-03-13", "19580399", "ACC880423", "Saint Ignatius Infirmary 3", "2019-04-13"):
        assert form in needles


def test_no_identifier_after_ingest_pretrain_fewshot_and_report(sources, tmp_path, capsys, caplog):
    from medcl.models import build_encoder
    from medcl.report import ReportData, render_report
    from medcl.serving.inference import load_encoder
    from medcl.fewshot.suite import evaluate_encoders, save_features
    from medcl.pipelines.pretrain import encoder_meta, run_pretrain

    caplog.set_level(logging.INFO)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config(None, TINY)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ingest([sources / "dicom"], out / "cohort", cfg.data, labels_csv=sources / "labels.csv",
                     test_fraction=0.5, progress=True, shots=1)
    assert res.counts()["ingested"] == 8 and not res.quarantined, res.quarantined
    cohort = Cohort.load(out / "cohort")
    pre = run_pretrain(cfg, out / "cohort", out, tracking.resolve_uri(None, out), progress=True, register=False)
    encoders = {"pretrained": load_encoder(pre.result.encoder_path, encoder_meta(cfg)),
                "random_init": build_encoder(cfg.model.arch, cfg.model.conv1_t_stride, cfg.model.widen_factor, seed=0)}
    fs = evaluate_encoders(cfg, cohort, encoders)
    save_features(fs, out / "features.npz")
    tracking.setup(tracking.resolve_uri(None, out), "medcl-fewshot", out)
    with mlflow.start_run(run_name="fewshot-phi-test"):
        for enc, heads in fs.results.items():
            for k, r in heads["prototype"].items():
                tracking.log_metrics({f"{enc}.balanced_accuracy": r["balanced_accuracy"]}, int(k))
        report = render_report(ReportData(title="phi audit", cohort={"all": cohort.counts(), "ingest": res.counts()},
                                          config=config_to_dict(cfg), curves=fs.results, primary_head="prototype",
                                          confusion_shot="1", losses=pre.result.losses), out / "report.html")
        mlflow.log_artifact(str(report))
    captured = capsys.readouterr()
    (out / "logs.txt").write_text(captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
                                  + "\n".join(str(w.message) for w in caught))
    (out / "summary.json").write_text(json.dumps({"ingest": res.counts(), "fewshot": fs.results}, default=str))

    written = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    assert {"cohort", "pretrain", "report.html", "features.npz", "logs.txt"} <= written
    assert any(p.suffix == ".db" for p in out.iterdir()) or (out / "mlruns").exists()
    assert audit(out, phi_values([sources / "dicom"])) == []
    assert main(["audit-phi", str(out), "--dicom", str(sources / "dicom")]) == 0


def test_audit_finds_identifiers_and_never_prints_them(sources, tmp_path, capsys):
    leak = tmp_path / "leaky"
    (leak / "nested").mkdir(parents=True)
    (leak / "nested" / "notes.txt").write_text("seen on 2019-04-12 by operator halvorsen2\n")
    (leak / "ACC880425_scan.npy").write_bytes(b"\x00" * 10)
    import gzip
    with gzip.open(leak / "log.json.gz", "wt") as fh:
        fh.write(json.dumps({"who": "Quixote Zebedee4"}))
    np.savez_compressed(leak / "arr.npz", **{"MRN731906": np.zeros(2)})
    rc = main(["audit-phi", str(leak), "--dicom", str(sources / "dicom")])
    out = capsys.readouterr().out
    assert rc == 1
    lines = out.splitlines()
    assert "nested/notes.txt: StudyDate value found in the file content" in lines
    assert "nested/notes.txt: OperatorsName value found in the file content" in lines
    assert any(line.startswith("log.json.gz!gunzip: PatientName") for line in lines)
    assert "arr.npz!<PatientID>.npy: PatientID value found in the file content" in lines
    assert "<AccessionNumber>_scan.npy: AccessionNumber value found in the file name" in lines
    for value in ("2019-04-12", "Halvorsen", "ACC880425", "Zebedee", "MRN731906"):
        assert value.lower() not in out.lower()
