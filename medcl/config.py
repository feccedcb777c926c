"""Typed configuration: every key has a default here, YAML files override them.

A config is a tree of dataclasses. ``load_config`` reads a YAML file, applies
``key.sub=value`` overrides from the command line and validates every leaf, so a
misspelt key or a value of the wrong type is a one-line :class:`ConfigError` that
names the key, not a crash twenty minutes into training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A bad config key or value; the message names it."""


@dataclass
class DataConfig:
    spacing: float = 2.0             # target isotropic voxel size (mm)
    foreground_threshold: float = 0.1  # fraction of the robust max that counts as foreground
    crop_margin: int = 2             # voxels kept around the foreground box
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    max_voxels: int = 64_000_000     # refuse volumes larger than this (memory guard)


@dataclass
class AugmentConfig:
    view_size: int = 48              # each view is resampled to view_size^3 voxels
    crop_scale: tuple[float, float] = (0.6, 1.0)  # crop edge / foreground-box edge, per axis
    min_foreground: float = 0.35     # fraction of a view that must be foreground (tissue)
    min_overlap: float = 0.3         # IoU of the two crops, at least
    rotate_deg: float = 10.0
    scale: float = 0.08
    flip_lr: bool = True             # left-right flip; brains are roughly symmetric
    bias_coeff: float = 0.3          # amplitude of the polynomial log bias field
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.75, 1.25)
    noise_std: tuple[float, float] = (0.0, 0.05)
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    blur_prob: float = 0.3
    max_tries: int = 50              # rejection sampling budget for crop constraints


@dataclass
class ModelConfig:
    arch: str = "resnet10"           # resnet10 | resnet18 | resnet34 | resnet50
    conv1_t_stride: int = 2
    proj_hidden: int = 512
    proj_dim: int = 128


@dataclass
class TrainConfig:
    method: str = "simclr"
    epochs: int = 30
    batch_size: int = 16             # pairs per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    temperature: float = 0.2
    num_workers: int = 1
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    threads: int = 0                 # torch CPU threads; 0 = torch's default
    checkpoint_every_epoch: bool = True


@dataclass
class FewShotConfig:
    shots: tuple[int, ...] = (1, 5, 10)
    n_query: int = 5
    n_episodes: int = 600
    heads: tuple[str, ...] = ("prototype", "logreg")
    primary_head: str = "prototype"  # the head whose numbers lead the report and summary
    seed: int = 0


@dataclass
class DemoConfig:
    n_subjects: int = 90
    seed: int = 0


@dataclass
class TrackingConfig:
    experiment: str = "medcl"
    encoder_model_name: str = "medcl-encoder"
    fewshot_model_name: str = "medcl-fewshot"
    alias: str = "champion"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Return ``value`` converted to ``typ`` or raise ConfigError naming ``key``."""
    origin = get_origin(typ)
    if origin is tuple:
        args = get_args(typ)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}': expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}': unsupported type {typ!r}")


def _apply(obj: Any, values: dict, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _validate(cfg: Config) -> None:
    checks = [
        (cfg.data.spacing > 0, "data.spacing", "must be > 0"),
        (0 < cfg.data.foreground_threshold < 1, "data.foreground_threshold", "must be in (0, 1)"),
        (cfg.augment.view_size >= 16, "augment.view_size", "must be >= 16"),
        (0 < cfg.augment.crop_scale[0] <= cfg.augment.crop_scale[1] <= 1, "augment.crop_scale",
         "must satisfy 0 < low <= high <= 1"),
        (0 <= cfg.augment.min_foreground < 1, "augment.min_foreground", "must be in [0, 1)"),
        (0 <= cfg.augment.min_overlap < 1, "augment.min_overlap", "must be in [0, 1)"),
        (cfg.model.arch in ("resnet10", "resnet18", "resnet34", "resnet50"), "model.arch",
         "must be one of resnet10, resnet18, resnet34, resnet50"),
        (cfg.model.conv1_t_stride in (1, 2), "model.conv1_t_stride", "must be 1 or 2"),
        (cfg.train.epochs >= 1, "train.epochs", "must be >= 1"),
        (cfg.train.batch_size >= 2, "train.batch_size", "must be >= 2 (contrastive losses need negatives)"),
        (cfg.train.lr > 0, "train.lr", "must be > 0"),
        (cfg.train.temperature > 0, "train.temperature", "must be > 0"),
        (cfg.train.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda"),
        (all(k >= 1 for k in cfg.fewshot.shots), "fewshot.shots", "must all be >= 1"),
        (cfg.fewshot.n_query >= 1, "fewshot.n_query", "must be >= 1"),
        (cfg.fewshot.n_episodes >= 1, "fewshot.n_episodes", "must be >= 1"),
        (cfg.fewshot.primary_head in cfg.fewshot.heads, "fewshot.primary_head", "must be one of fewshot.heads"),
        (cfg.demo.n_subjects >= 6, "demo.n_subjects", "must be >= 6"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {why}, got {_get(cfg, key)!r}")


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        _apply(cfg, values, "")
    for text in overrides or []:
        keys, value = _parse_override(text)
        nested: dict = {}
        cursor = nested
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
        _apply(cfg, nested, "")
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON and MLflow params."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
