"""Pure loss functions: tensors in, a scalar loss out; no state, no modules."""

from medcl.losses.nt_xent import nt_xent

__all__ = ["nt_xent"]
