"""Pure loss functions: tensors in, a scalar loss out; no state, no modules.

Each function checks its arguments, cites its paper and shows a runnable example in its
module docstring. Under DDP a method passes the embeddings of every GPU (gathered with
:func:`medcl.dist.gather`, which carries gradients), so the loss is computed on the
global batch exactly as on one GPU. Every loss is wrapped in :func:`medcl.losses._checks.fp32`:
it runs in float32 whatever the caller's autocast (bf16 logits at t = 0.1 would be off by ~0.02),
and a new loss must be wrapped too (tests/test_losses_fp32.py checks every name below).

| function | paper | coupling across the batch |
|---|---|---|
| :func:`nt_xent` | SimCLR, Chen et al. 2020 | negatives |
| :func:`info_nce` | MoCo, He et al. 2020 (queue) | negatives |
| :func:`normalized_regression` | BYOL, Grill et al. 2020 | none |
| :func:`barlow_twins` | Zbontar et al. 2021 | cross-correlation |
| :func:`vicreg` | Bardes et al. 2022 | variance, covariance |
| :func:`supcon` | Khosla et al. 2020 | negatives, positives by label |
| :func:`triplet_margin` | Weinberger & Saul 2009; FaceNet 2015 | triplets by label |
| :func:`contrastive_margin` | Hadsell et al. 2006 | pairs by label |
| :func:`n_pair` | Sohn 2016 | negatives |
| :func:`swav` (:func:`sinkhorn`) | SwAV, Caron et al. 2020 | codes: Sinkhorn-Knopp over the batch (sums all-reduced) |
"""

from medcl.losses.barlow_twins import barlow_twins
from medcl.losses.byol import normalized_regression
from medcl.losses.contrastive_margin import contrastive_margin
from medcl.losses.info_nce import info_nce
from medcl.losses.npair import n_pair
from medcl.losses.nt_xent import nt_xent
from medcl.losses.supcon import supcon
from medcl.losses.swav import sinkhorn, swav
from medcl.losses.triplet import triplet_margin
from medcl.losses.vicreg import vicreg

__all__ = ["barlow_twins", "contrastive_margin", "info_nce", "n_pair", "normalized_regression", "nt_xent",
           "sinkhorn", "supcon", "swav", "triplet_margin", "vicreg"]
