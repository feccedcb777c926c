"""Serving: the registered MLflow pyfunc models, the registry (log, register, aliases,
promote) and what a model does at prediction time (scans in, representations or class
probabilities out).

It sits near the top of the layers: a served model preprocesses a scan exactly as ingest did
(:mod:`medcl.data.ingest`), takes its evaluation view (:mod:`medcl.augment`) and embeds it
(:mod:`medcl.fewshot.embed`). Metric logging lives below, in :mod:`medcl.tracking`, so that
training can log a number without importing any of this.
"""
