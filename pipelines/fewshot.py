"""Few-shot evaluation of a registered encoder on a labelled cohort: report, summary.json, MLflow run.

A runnable script over the library, the same as ``medcl fewshot``: ``python pipelines/fewshot.py --help``.
The pipeline itself is :mod:`medcl.pipelines.fewshot`."""

import sys

from medcl.cli import main

if __name__ == "__main__":
    sys.exit(main(["fewshot", *sys.argv[1:]]))
