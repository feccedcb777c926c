"""Pretraining pipeline: cohort -> contrastive pretraining -> MLflow run + registered encoder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml

from medcl import tracking
from medcl.config import Config, config_to_dict, flatten
from medcl.data.cohort import Cohort
from medcl.tracking.registry import log_encoder
from medcl.train import PretrainResult, pretrain


def encoder_meta(cfg: Config) -> dict:
    """What a registered model needs to rebuild the encoder and prepare its input."""
    return {"arch": cfg.model.arch, "conv1_t_stride": cfg.model.conv1_t_stride,
            "view_size": cfg.augment.view_size, "data": config_to_dict(cfg)["data"]}


@dataclass
class PretrainOutput:
    run_id: str
    result: PretrainResult
    encoder_uri: str | None


def pretrain_cohort(cohort: Cohort) -> Cohort:
    """The scans pretraining may see: the ``train`` split when there is one, else all."""
    train = cohort.select(split="train")
    return train if len(train) else cohort


def run_pretrain(cfg: Config, cohort_dir: Path, out_dir: Path, progress: bool = True,
                 register: bool = True) -> PretrainOutput:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracking.setup(out_dir, f"{cfg.tracking.experiment}-pretrain")
    cohort = pretrain_cohort(Cohort.load(cohort_dir))
    cfg_dict = config_to_dict(cfg)
    with mlflow.start_run(run_name=f"pretrain-{cfg.train.method}") as run:
        tracking.log_params(flatten({k: cfg_dict[k] for k in ("data", "augment", "model", "train")}))
        mlflow.log_dict(cfg_dict, "config.yaml")
        mlflow.set_tags({"medcl.stage": "pretrain", "medcl.cohort.scans": str(len(cohort))})
        result = pretrain(cfg, cohort, out_dir / "pretrain", progress=progress)
        tracking.log_metrics({"pretrain_seconds": result.seconds, "final_loss": result.losses[-1]}, result.steps)
        tracking.log_artifact(result.checkpoint_path, "checkpoints")
        uri = None
        if register:
            from medcl.tracking.inference import load_encoder

            encoder = load_encoder(result.encoder_path, encoder_meta(cfg))
            info = log_encoder(encoder, encoder_meta(cfg), cfg.tracking.encoder_model_name)
            uri = f"models:/{cfg.tracking.encoder_model_name}/{info.registered_model_version}"
        (out_dir / "pretrain" / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        (out_dir / "pretrain" / "run.json").write_text(json.dumps({"run_id": run.info.run_id, "encoder_uri": uri}))
    return PretrainOutput(run.info.run_id, result, uri)
