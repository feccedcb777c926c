"""Contrastive pretraining on a cohort, logged to MLflow, encoder registered.

A runnable script over the library, the same as ``medcl pretrain``: ``python pipelines/pretrain.py --help``.
The pipeline itself is :mod:`medcl.pipelines.pretrain`."""

import sys

from medcl.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
