"""medcl: contrastive pretraining of 3D encoders and few-shot diagnosis from MRI."""
__version__ = "0.1.0"
