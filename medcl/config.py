"""Typed configuration: every key has a default here, YAML files override them.

A config is a tree of dataclasses. ``load_config`` reads a YAML file, applies ``key.sub=value`` overrides from
the command line and validates every leaf, so a misspelt key or a value of the wrong type is a one-line
:class:`ConfigError` that names the key, not a crash twenty minutes into training.
"""

from __future__ import annotations

import dataclasses
import re
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
    policy_4d: str = "quarantine"    # a 4D image (several volumes): quarantine | first | mean
    workers: int = 0                 # ingest worker processes; 0 = one per CPU core, 1 = in-process
    # DICOM series selection (docs/data.md): a series is ingested when every rule passes
    dicom_modalities: tuple[str, ...] = ("MR",)  # (0008,0060) Modality; empty = any
    dicom_include: str = ""          # regex on SeriesDescription (case-insensitive); "" = all, e.g. "t1|mprage"
    dicom_exclude: str = "localizer|scout|survey|3.?plane"  # regex on SeriesDescription; "" = none
    dicom_skip_image_types: tuple[str, ...] = ("LOCALIZER", "DERIVED")  # (0008,0008) values that skip a series
    dicom_min_slices: int = 3        # fewer slices than this is a 2D image, not a volume
    npz_spacing: float = 0.0         # voxel size (mm) of MedMNIST-style .npz volumes; 0 = data.spacing
    # brain MRI (docs/data.md, "Registration to the MNI template"); leave off for other data
    register: str = "none"           # none | rigid | affine: resample onto the MNI ICBM152 2009 template grid
    brain_mask: str = "none"         # none (intensity threshold) | template: the template's brain mask (needs register)
    normative: str = "none"          # none | pool: voxel z-scores against the train split (medcl.data.normative)
    bids_suffixes: tuple[str, ...] = ("T1w",)   # BIDS anat suffixes ingested (sub-*/[ses-*/]anat/*_T1w.nii.gz)
    bids_label_column: str = "diagnosis"  # participants.tsv column that holds the label


@dataclass
class AugmentConfig:
    view_size: int = 48              # each view is resampled to view_size^3 voxels
    crop_scale: tuple[float, float] = (0.75, 1.0)  # crop edge / foreground-box edge, one scale for all axes
    min_foreground: float = 0.35     # fraction of a view that must be foreground (tissue)
    min_overlap: float = 0.5         # IoU of the two crops, at least
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
    # multi-crop (SwAV's, Caron et al. 2020): small local views besides the two global ones;
    # methods that use them: docs/methods.md, "Multi-crop"
    local_views: int = 0             # local views per scan (0 = off)
    local_scale: tuple[float, float] = (0.3, 0.5)  # local crop edge / foreground-box edge
    local_size: int = 24             # each local view is resampled to local_size^3 voxels
    # optional (0 = off: then nothing is drawn for them and the views are as without the keys)
    shear: float = 0.0               # each of the 6 MONAI shear coefficients in [-shear, shear]
    gibbs_prob: float = 0.0          # probability of Gibbs ringing (k-space truncation) per view
    gibbs_alpha: tuple[float, float] = (0.3, 0.6)  # MONAI GibbsNoise alpha range (0 = none, 1 = all cut)
    spike_prob: float = 0.0          # probability of a k-space spike (herringbone stripes) per view
    spike_amplitude: tuple[float, float] = (0.01, 0.05)  # stripe amplitude, fraction of the [0, 1] range
    # how views are made (docs/performance.md): monai = per-sample MONAI transforms in DataLoader
    # workers; batched = the same parameters applied to the whole batch with torch ops on the
    # training device (medcl.augment.batched), from a cohort cache held once (medcl.train.data)
    backend: str = "batched"         # batched | monai
    cache: str = "auto"              # batched backend: auto | device | pinned | host | stream


@dataclass
class ModelConfig:
    arch: str = "resnet10"           # resnet10 | resnet18 | resnet34 | resnet50
    conv1_t_stride: int = 2
    widen_factor: float = 1.0        # MONAI ResNet channel multiplier (0.5 halves every stage)
    proj_hidden: int = 512
    proj_dim: int = 128


@dataclass
class TrainConfig:
    method: str = "simclr"           # simclr | moco | byol | barlow_twins | vicreg | swav | supcon | triplet | margin | npair
    epochs: int = 30
    batch_size: int = 16             # pairs per step over all processes (global); split evenly across DDP ranks
    lr: float = 1e-3                 # at lr_reference_batch pairs when lr_scaling is linear or sqrt
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0       # linear warmup, then cosine decay to 0 (per step)
    optimizer: str = "adamw"         # adamw | sgd | lars (lars: biases and norm weights excluded from adaptation and decay)
    momentum: float = 0.9            # sgd and lars momentum
    lars_eta: float = 0.001          # lars trust coefficient
    lr_scaling: str = "none"         # none | linear | sqrt: lr * (batch_size / lr_reference_batch) [** 0.5]
    lr_reference_batch: int = 256
    temperature: float = 0.2         # simclr, moco, supcon, swav
    learn_temperature: bool = False  # temperature as a trained parameter (log-parametrised, >= 0.01)
    # method-specific (medcl/ssl/<method>.py reads only its own)
    ema_momentum: float = 0.99       # moco, byol: momentum encoder EMA at step 0, cosine schedule to ...
    ema_momentum_end: float = 1.0    # ... this at the last step
    queue_size: int = 4096           # moco: keys of earlier batches kept as negatives (0 = in-batch only)
    barlow_lambda: float = 5e-3      # barlow_twins: weight of the off-diagonal terms
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)  # vicreg: invariance, variance, covariance
    margin: float = 0.2              # triplet margin
    pos_margin: float = 0.0          # margin (contrastive margin on pairs): positives pulled within this distance
    neg_margin: float = 1.0          # ... negatives pushed beyond this one
    npair_l2_reg: float = 0.002      # npair: L2 penalty on the (unnormalised) embeddings
    swav_prototypes: int = 32        # swav: number of prototypes (clusters)
    swav_epsilon: float = 0.05       # swav: Sinkhorn-Knopp entropy regularisation
    swav_iterations: int = 3         # swav: Sinkhorn-Knopp iterations
    swav_queue_size: int = 0         # swav: earlier embeddings per global view joined to the codes' batch (0 = none)
    swav_freeze_prototypes: int = 0  # swav: optimiser steps during which the prototypes do not move
    num_workers: int = 1             # loader workers (batched: draw view parameters, read bytes; monai: make views)
    worker_kind: str = "thread"      # batched backend: thread (no extra process, no extra memory) | process
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    threads: int = 0                 # torch CPU threads; 0 = torch's default
    compile: bool = False            # torch.compile the step's module (medcl.train.speed; minutes to compile)
    log_every_steps: int = 10        # step scalars fetched from the device (and health/* computed) every N steps
    precision: str = "auto"          # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (CUDA, gradient scaler) | fp64 (numerical checks)
    sync_bn: bool = False            # DDP: batch-norm statistics over every process's samples
    ddp_backend: str = "auto"        # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    checkpoint_every_epoch: bool = True
    checkpoint_every_steps: int = 0  # also every N optimiser steps; 0 = off
    # training health (MLflow metrics health/*): alignment, uniformity, std of normalised embeddings
    collapse_threshold: float = 0.1  # warn when std * sqrt(dim) of normalised embeddings falls below this
    knn_every_epochs: int = 0        # online kNN balanced accuracy on the labelled scans; 0 = off
    knn_k: int = 10


@dataclass
class FewShotConfig:
    # docs/fewshot.md: every head and baseline is scored on the same episodes (one seed per K)
    shots: tuple[int, ...] = (1, 5, 10)
    n_query: int = 5                 # query subjects per class and episode
    n_episodes: int = 1000           # episodes per K for the vectorised heads (prototype*, knn)
    heads: tuple[str, ...] = ("prototype", "prototype_euclidean", "logreg", "knn")
    primary_head: str = "prototype"  # the head whose numbers lead the report and summary
    seed: int = 0
    logreg_episodes: int = 30        # the first N of those episodes for logreg (C chosen by LOSO: costly)
    logreg_Cs: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)  # grid for the leave-one-subject-out choice of C
    logreg_C: float = 1.0            # C when K = 1 (LOSO would leave a class empty)
    knn_k: int = 3                   # neighbours (at most K)
    baselines: tuple[str, ...] = ("raw_voxels", "radiomics", "scratch")  # beside the random-init encoder (always)
    pca_components: int = 64        # raw-voxel baseline: PCA components (at most pretraining scans - 1)
    radiomics_spacing: float = 4.0   # radiomics baseline: grid (mm) it is computed on (0 = the cohort's own)
    radiomics_families: tuple[str, ...] = ("statistics", "intensity_histogram", "glcm", "glszm")  # MIRP's names
    radiomics_bins: int = 32         # fixed bin number of its grey-level discretisation
    radiomics_workers: int = 2       # processes computing it (0 or 1: in the evaluating process)
    radiomics_fit_scans: int = 0     # train-split scans its z-scoring is fitted on (0 = all of them)
    scratch_episodes: int = 20       # from-scratch 3D ResNet: the first N episodes per K (one training each)
    scratch_steps: int = 20          # its optimiser steps per episode (full support batch)
    scratch_view_size: int = 24      # its input: the evaluation view downsampled to this size
    scratch_widen: float = 0.125     # its MONAI ResNet-10 widen factor
    scratch_lr: float = 0.003
    probe: bool = True               # the ceiling: linear probe on all labels (cross-validated over subjects)
    probe_folds: int = 5
    n_boot: int = 1000               # subject-bootstrap replicates for every 95% CI
    budget_method: str = "kmedoids"  # label-budget advice checked in the report: kmedoids | kcenter | none
    budget_random: int = 200         # random supports it is compared with, per K
    # labels it needs (docs/fewshot.md, "Label-budget curve"): an inverse power law fitted to the
    # metric at these K (scored on the pretrained features only; () = off), subject bootstrap.
    # Adding 20 costs ~40 s on the demo (logistic regression's LOSO at K = 20), 5 s without logreg
    curve_shots: tuple[int, ...] = (1, 2, 3, 5, 10)
    curve_heads: tuple[str, ...] = ("prototype", "logreg")  # those of fewshot.heads get a curve
    curve_targets: tuple[float, ...] = (0.8, 0.9)          # balanced accuracies: labels per class needed
    curve_boot: int = 200            # bootstrap replicates of the curve (one refit each)
    # how sure it is (docs/fewshot.md, "Calibration and prediction sets")
    calibration: str = "temperature"  # temperature scaling fitted on the support set by cross-fitting | none
    conformal_coverage: float = 0.9  # target coverage of the prediction sets (split conformal)
    # where it looked (docs/fewshot.md, "Saliency"): the demo report's maps of the registered head
    saliency: str = "gradcam"        # gradcam (last stage, coarse) | gradient (per voxel) | occlusion (~25 s a scan) | none
    saliency_per_class: int = 1      # correctly and wrongly classified evaluation scans shown per class
    embedding_map: str = "tsne"      # report's map of the embeddings: tsne | none
    pdf: bool = True                 # print report.pdf with headless Chromium (skipped with a warning if absent)


@dataclass
class DemoConfig:
    n_subjects: int = 90
    seed: int = 0
    seeds: int = 1                   # pretraining seeds (train.seed, +1, ...): mean and spread beside the CIs


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
    if typ in (int, float):
        what = "an integer" if typ is int else "a number"
        fractional = typ is int and isinstance(value, float) and not value.is_integer()
        try:
            if isinstance(value, bool) or fractional:
                raise ValueError(value)
            return typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected {what}, got {value!r}") from None
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


def _regex_ok(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


# Each check: (holds, key, why). Value lists that a registry owns (methods, heads, baselines,
# architectures, cache placements, optimisers) are checked by medcl.validate, above the owners.

def _data_checks(d: DataConfig) -> list[tuple[bool, str, str]]:
    return [
        (d.spacing > 0, "data.spacing", "must be > 0"),
        (0 < d.foreground_threshold < 1, "data.foreground_threshold", "must be in (0, 1)"),
        (d.policy_4d in ("quarantine", "first", "mean"), "data.policy_4d", "must be quarantine, first or mean"),
        (d.workers >= 0, "data.workers", "must be >= 0 (0 = one per CPU core)"),
        (d.dicom_min_slices >= 2, "data.dicom_min_slices", "must be >= 2"),
        (d.npz_spacing >= 0, "data.npz_spacing", "must be >= 0"),
        (_regex_ok(d.dicom_include), "data.dicom_include", "must be a valid regular expression"),
        (_regex_ok(d.dicom_exclude), "data.dicom_exclude", "must be a valid regular expression"),
        (d.register in ("none", "rigid", "affine"), "data.register", "must be none, rigid or affine"),
        (d.brain_mask in ("none", "template"), "data.brain_mask", "must be none or template"),
        (d.brain_mask == "none" or d.register != "none", "data.brain_mask", "template needs data.register rigid|affine"),
        (d.normative == "none" or d.normative == "pool" and d.brain_mask == "template", "data.normative",
         "must be none, or pool with data.brain_mask: template (a voxel the same place in every scan)"),
    ]


def _augment_checks(a: AugmentConfig) -> list[tuple[bool, str, str]]:
    return [
        (a.view_size >= 16, "augment.view_size", "must be >= 16"),
        (0 < a.crop_scale[0] <= a.crop_scale[1] <= 1, "augment.crop_scale", "must satisfy 0 < low <= high <= 1"),
        (0 <= a.min_foreground < 1, "augment.min_foreground", "must be in [0, 1)"),
        (0 <= a.min_overlap < 1, "augment.min_overlap", "must be in [0, 1)"),
        (a.shear >= 0, "augment.shear", "must be >= 0"),
        (0 <= a.gibbs_prob <= 1, "augment.gibbs_prob", "must be in [0, 1]"),
        (0 <= a.gibbs_alpha[0] <= a.gibbs_alpha[1] < 1, "augment.gibbs_alpha", "must satisfy 0 <= low <= high < 1"),
        (0 <= a.spike_prob <= 1, "augment.spike_prob", "must be in [0, 1]"),
        (0 < a.spike_amplitude[0] <= a.spike_amplitude[1], "augment.spike_amplitude", "must satisfy 0 < low <= high"),
        (a.local_views >= 0, "augment.local_views", "must be >= 0 (0 = off)"),
        (0 < a.local_scale[0] <= a.local_scale[1] <= 1, "augment.local_scale", "must satisfy 0 < low <= high <= 1"),
        (a.local_views == 0 or 8 <= a.local_size <= a.view_size, "augment.local_size",
         "must be in [8, augment.view_size] when augment.local_views > 0"),
    ]


def _model_checks(m: ModelConfig) -> list[tuple[bool, str, str]]:
    return [
        (m.conv1_t_stride in (1, 2), "model.conv1_t_stride", "must be 1 or 2"),
        (m.widen_factor > 0, "model.widen_factor", "must be > 0"),
    ]


def _train_checks(t: TrainConfig) -> list[tuple[bool, str, str]]:
    return [
        (t.epochs >= 1, "train.epochs", "must be >= 1"),
        (t.batch_size >= 2, "train.batch_size", "must be >= 2 (contrastive losses need negatives)"),
        (t.lr > 0, "train.lr", "must be > 0"),
        (t.num_workers >= 0, "train.num_workers", "must be >= 0"),
        (t.temperature > 0, "train.temperature", "must be > 0"),
        (0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)"),
        (t.lars_eta > 0, "train.lars_eta", "must be > 0"),
        (t.lr_scaling in ("none", "linear", "sqrt"), "train.lr_scaling", "must be none, linear or sqrt"),
        (t.lr_reference_batch >= 1, "train.lr_reference_batch", "must be >= 1"),
        (t.weight_decay >= 0, "train.weight_decay", "must be >= 0"),
        (t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0"),
        (t.precision in ("auto", "fp32", "bf16", "fp16", "fp64"), "train.precision",
         "must be auto, fp32, bf16, fp16 or fp64"),
        (t.ddp_backend in ("auto", "nccl", "gloo"), "train.ddp_backend", "must be auto, nccl or gloo"),
        (t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", "must be >= 0 (0 = off)"),
        (t.log_every_steps >= 1, "train.log_every_steps", "must be >= 1"),
        (t.collapse_threshold >= 0, "train.collapse_threshold", "must be >= 0"),
        (t.knn_every_epochs >= 0, "train.knn_every_epochs", "must be >= 0 (0 = off)"),
        (t.knn_k >= 1, "train.knn_k", "must be >= 1"),
        (t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda"),
    ]


def _fewshot_checks(f: FewShotConfig) -> list[tuple[bool, str, str]]:
    return [
        (all(k >= 1 for k in f.shots), "fewshot.shots", "must all be >= 1"),
        (f.n_query >= 1, "fewshot.n_query", "must be >= 1"),
        (f.n_episodes >= 1, "fewshot.n_episodes", "must be >= 1"),
        (f.primary_head in f.heads, "fewshot.primary_head", "must be one of fewshot.heads"),
        (f.logreg_episodes >= 1, "fewshot.logreg_episodes", "must be >= 1"),
        (len(f.logreg_Cs) >= 1 and all(c > 0 for c in f.logreg_Cs), "fewshot.logreg_Cs",
         "must be one or more numbers > 0"),
        (f.logreg_C > 0, "fewshot.logreg_C", "must be > 0"),
        (f.knn_k >= 1, "fewshot.knn_k", "must be >= 1"),
        (f.pca_components >= 1, "fewshot.pca_components", "must be >= 1"),
        (f.radiomics_spacing >= 0, "fewshot.radiomics_spacing", "must be >= 0 mm (0 = the cohort's own grid)"),
        (len(f.radiomics_families) >= 1 and len(set(f.radiomics_families)) == len(f.radiomics_families),
         "fewshot.radiomics_families", "must be one or more distinct family names"),
        (f.radiomics_bins >= 2, "fewshot.radiomics_bins", "must be >= 2"),
        *[(getattr(f, k) >= 0, f"fewshot.{k}", "must be >= 0") for k in ("radiomics_workers", "radiomics_fit_scans")],
        (f.scratch_episodes >= 1, "fewshot.scratch_episodes", "must be >= 1"),
        (f.scratch_steps >= 1, "fewshot.scratch_steps", "must be >= 1"),
        (f.scratch_view_size >= 16, "fewshot.scratch_view_size", "must be >= 16"),
        (f.scratch_widen > 0, "fewshot.scratch_widen", "must be > 0"),
        (f.scratch_lr > 0, "fewshot.scratch_lr", "must be > 0"),
        (f.probe_folds >= 2, "fewshot.probe_folds", "must be >= 2"),
        (f.n_boot >= 0, "fewshot.n_boot", "must be >= 0 (0 = no bootstrap intervals)"),
        (f.budget_random >= 1, "fewshot.budget_random", "must be >= 1"),
        (f.embedding_map in ("tsne", "none"), "fewshot.embedding_map", "must be tsne or none"),
        (all(k >= 1 for k in f.curve_shots), "fewshot.curve_shots", "must be K values >= 1 (empty = no curve)"),
        (all(0 < t < 1 for t in f.curve_targets), "fewshot.curve_targets", "must be numbers in (0, 1)"),
        (f.curve_boot >= 10, "fewshot.curve_boot", "must be >= 10"),
        (f.calibration in ("temperature", "none"), "fewshot.calibration", "must be temperature or none"),
        (0 < f.conformal_coverage < 1, "fewshot.conformal_coverage", "must be in (0, 1)"),
        (f.saliency in ("gradcam", "gradient", "occlusion", "none"), "fewshot.saliency", "must be gradcam|gradient|occlusion|none"),
        (f.saliency_per_class >= 1, "fewshot.saliency_per_class", "must be >= 1"),
    ]


def raise_failed(cfg: "Config", checks: list[tuple[bool, str, str]]) -> None:
    """The first failed ``(holds, key, why)`` check as a one-line ConfigError naming the key."""
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {why}, got {_get(cfg, key)!r}")


def _validate(cfg: Config) -> None:
    raise_failed(cfg, _data_checks(cfg.data) + _augment_checks(cfg.augment) + _model_checks(cfg.model)
                 + _train_checks(cfg.train) + _fewshot_checks(cfg.fewshot)
                 + [(cfg.demo.n_subjects >= 6, "demo.n_subjects", "must be >= 6"),
                    (cfg.demo.seeds >= 1, "demo.seeds", "must be >= 1")])


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
