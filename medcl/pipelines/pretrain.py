"""Pretraining pipeline: cohort -> contrastive pretraining -> MLflow run + registered encoder."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import yaml

from medcl import tracking
from medcl.config import Config, config_to_dict, flatten
from medcl.data.cohort import Cohort
from medcl.data.normative import NormativeReference
from medcl.dist import is_main_process
from medcl.serving.inference import check_reference, load_encoder
from medcl.serving.registry import alias_new_version, log_encoder
from medcl.tracking import RunHandle
from medcl.train import PretrainResult, pretrain
from medcl.train.callbacks import StepTiming
from medcl.train.state import read_run_id


def encoder_meta(cfg: Config, reference: NormativeReference | None = None) -> dict:
    """What a registered model needs to rebuild the encoder and prepare its input (with the
    fingerprint of the cohort's normative reference, when it has one)."""
    meta = {"arch": cfg.model.arch, "conv1_t_stride": cfg.model.conv1_t_stride, "widen_factor": cfg.model.widen_factor,
            "view_size": cfg.augment.view_size, "data": config_to_dict(cfg)["data"]}
    return meta if reference is None else {**meta, "normative_sha256": reference.sha256}


@dataclass
class PretrainOutput:
    run_id: str | None      # None only while the tracking server is unreachable (see medcl.tracking)
    result: PretrainResult
    encoder_uri: str | None


def pretrain_cohort(cohort: Cohort) -> Cohort:
    """The scans pretraining may see: the ``train`` split when there is one, else all."""
    train = cohort.select(split="train")
    return train if len(train) else cohort


@contextmanager
def _continued_run(run_id: str, name: str):
    """The MLflow run ``run_id`` again (``--resume``): reopened as the active run, which
    medcl.tracking logs to; FINISHED when the block ends, FAILED if it raises."""
    with mlflow.start_run(run_id=run_id):
        yield RunHandle(run_id, name, "", run_id=run_id)


def run_pretrain(cfg: Config, cohort_dir: Path, out_dir: Path, tracking_uri: str, progress: bool = True,
                 register: bool = True, resume: bool = False, subdir: str = "pretrain",
                 on_timing: Callable[[StepTiming], None] | None = None) -> PretrainOutput:
    """Pretrain on ``cohort_dir``'s train split, log to MLflow at ``tracking_uri`` (a run tagged
    ``medcl.train_seed``), register the encoder. Files go to ``out_dir/subdir``. With ``resume``,
    continue from ``out_dir/subdir/checkpoints/last.pt`` and its MLflow run. ``on_timing``: see
    :func:`medcl.train.pretrain`. Under torchrun only rank 0 talks to MLflow; the other ranks
    train and return no run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / subdir
    cohort = pretrain_cohort(Cohort.load(cohort_dir))
    check_reference(encoder_meta(cfg), cohort.reference, str(cohort_dir))   # data.normative as the cohort was made
    if not is_main_process():
        result = pretrain(cfg, cohort, work, progress=False, resume=resume)
        return PretrainOutput(None, result, None)
    resume_id = read_run_id(work / "checkpoints" / "last.pt") if resume else ""
    tracking.setup(tracking_uri, f"{cfg.tracking.experiment}-pretrain", out_dir)
    cfg_dict = config_to_dict(cfg)
    name = f"pretrain-{cfg.train.method}"
    with (_continued_run(resume_id, name) if resume_id else
          tracking.start_run(name, tags={"medcl.stage": "pretrain", "medcl.cohort.scans": str(len(cohort)),
                                         "medcl.train_seed": str(cfg.train.seed)})) as run:
        if not resume_id:
            tracking.log_params(flatten({k: cfg_dict[k] for k in ("data", "augment", "model", "train")}))
            tracking.log_dict(cfg_dict, "config.yaml")
        result = pretrain(cfg, cohort, work, progress=progress, resume=resume, run_id=run.run_id, on_timing=on_timing)
        tracking.log_metrics({"pretrain_seconds": result.seconds, "final_loss": result.losses[-1]}, result.steps)
        tracking.log_artifact(result.checkpoint_path, "checkpoints")
        uri = None
        if register:
            encoder = load_encoder(result.encoder_path, encoder_meta(cfg))
            name = cfg.tracking.encoder_model_name
            info = log_encoder(encoder, encoder_meta(cfg, cohort.reference), name, run=run, reference=cohort.reference,
                               version_tags={"medcl.pretrain_run_id": run.run_id},
                               card_info={"training_data": f"{len(cohort)} unlabelled scans, {cfg.train.method} "
                                          f"for {cfg.train.epochs} epochs (final loss {result.losses[-1]:.4f})",
                                          "lineage": {"pretraining run": run.run_id}})
            if info is not None:
                uri = f"models:/{name}/{info.registered_model_version}"
                alias_new_version(name, info.registered_model_version, cfg.tracking.alias)
                tracking.set_tags({"medcl.encoder_uri": uri})
        (work / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        (work / "run.json").write_text(json.dumps({"run_id": run.run_id, "encoder_uri": uri}))
    return PretrainOutput(run.run_id, result, uri)
