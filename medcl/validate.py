"""The config checked against the registries that own its names.

:func:`medcl.config.load_config` checks types and ranges; the *names* a config may use belong
to the modules that implement them — methods (:data:`medcl.ssl.METHODS`, each method also
checking its own settings and saying whether it uses multi-crop's local views), encoder architectures (:data:`medcl.models.FEATURE_DIMS`), cache
placements and loader worker kinds (:mod:`medcl.train.store`, :mod:`medcl.train.batched_pairs`), optimisers
(:data:`medcl.train.optim.OPTIMIZERS`), few-shot heads, baselines and label-budget methods
(:mod:`medcl.fewshot`), radiomics feature families
(:data:`medcl.fewshot.radiomics.FAMILY_NAMES`). This pass sits above all of them, so that ``config`` never imports
upward and no list of names is written twice. Every command loads its config through
:func:`load_checked`.
"""

from __future__ import annotations

from pathlib import Path

from medcl.config import Config, ConfigError, load_config, raise_failed
from medcl.fewshot.baselines import BASELINES
from medcl.fewshot.budget import METHODS as BUDGET_METHODS
from medcl.fewshot.heads import HEADS
from medcl.fewshot.radiomics import FAMILY_NAMES as RADIOMICS_FAMILIES
from medcl.models import FEATURE_DIMS
from medcl.ssl import METHODS, method_class
from medcl.train.batched_pairs import WORKER_KINDS
from medcl.train.data import BACKENDS
from medcl.train.store import PLACEMENTS
from medcl.train.optim import OPTIMIZERS


def _one_of(names) -> str:
    return "must be one of " + ", ".join(names)


def _among(names) -> str:
    return "must be among " + ", ".join(names)


def check_names(cfg: Config) -> None:
    """Raise a one-line :class:`ConfigError` naming the first key whose value no registry knows,
    or whose method-specific setting the selected method refuses."""
    t, f = cfg.train, cfg.fewshot
    raise_failed(cfg, [
        (t.method in METHODS, "train.method", _one_of(METHODS)),
        (cfg.model.arch in FEATURE_DIMS, "model.arch", _one_of(FEATURE_DIMS)),
        (cfg.augment.backend in BACKENDS, "augment.backend", _one_of(BACKENDS)),
        (cfg.augment.cache in ("auto",) + PLACEMENTS, "augment.cache", _one_of(("auto",) + PLACEMENTS)),
        (t.worker_kind in WORKER_KINDS, "train.worker_kind", _one_of(WORKER_KINDS)),
        (t.optimizer in OPTIMIZERS, "train.optimizer", _one_of(OPTIMIZERS)),
        (set(f.heads) <= set(HEADS), "fewshot.heads", _among(HEADS)),
        (set(f.curve_heads) <= set(HEADS), "fewshot.curve_heads", _among(HEADS)),
        (set(f.baselines) <= set(BASELINES), "fewshot.baselines", _among(BASELINES)),
        (set(f.radiomics_families) <= set(RADIOMICS_FAMILIES), "fewshot.radiomics_families",
         _among(RADIOMICS_FAMILIES)),
        (f.budget_method in BUDGET_METHODS + ("none",), "fewshot.budget_method", _one_of(BUDGET_METHODS + ("none",))),
    ])
    method = method_class(t.method)
    raise_failed(cfg, method.checks(t) + [
        (cfg.augment.local_views == 0 or method.uses_local_views, "augment.local_views",
         f"must be 0 for {t.method}, which does not use local views (docs/methods.md, \"Multi-crop\")")])


def load_checked(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """:func:`medcl.config.load_config`, then :func:`check_names`."""
    cfg = load_config(path, overrides)
    check_names(cfg)
    return cfg


__all__ = ["check_names", "load_checked", "ConfigError"]
