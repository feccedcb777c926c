"""End-to-end pipelines (orchestration only, just below :mod:`medcl.cli`): pretraining
(:mod:`medcl.pipelines.pretrain`), few-shot evaluation and label suggestions
(:mod:`medcl.pipelines.fewshot`) and the demo (:mod:`medcl.pipelines.demo`). The logic they
compose lives in the library layers below."""
