"""Anatomy-preserving random view pairs: parameters sampled once, applied deterministically."""

from medcl.augment.params import (ViewParams, crop_cover, crop_iou, foreground_fraction, identity_view, sample_pair,
                                  sample_views)
from medcl.augment.views import apply_view, eval_view, make_pair, make_views

__all__ = ["ViewParams", "apply_view", "crop_cover", "crop_iou", "eval_view", "foreground_fraction",
           "identity_view", "make_pair", "make_views", "sample_pair", "sample_views"]
