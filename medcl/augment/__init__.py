"""Anatomy-preserving random view pairs: parameters sampled once, applied deterministically."""

from medcl.augment.params import ViewParams, crop_iou, foreground_fraction, identity_view, sample_pair
from medcl.augment.views import apply_view, eval_view, make_pair

__all__ = ["ViewParams", "apply_view", "crop_iou", "eval_view", "foreground_fraction",
           "identity_view", "make_pair", "sample_pair"]
