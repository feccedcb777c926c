"""The demo: simulated cohort -> pretraining -> few-shot evaluation -> report and registered models.

A runnable script over the library, the same as ``medcl demo``: ``python pipelines/demo.py --help``.
The pipeline itself is :mod:`medcl.pipelines.demo`."""

import sys

from medcl.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
