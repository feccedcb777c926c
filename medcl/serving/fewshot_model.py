"""MLflow model-from-code: the few-shot diagnosis model (scans -> class probabilities, label).

The encoder weights (state dict, loaded with ``weights_only=True``) and the head (plain arrays
in an ``.npz``, loaded with ``allow_pickle=False``) are artifacts; nothing is unpickled at load
time. Input: one column of scans (NIfTI paths, DICOM folders or 3D arrays in RAS voxel order),
param ``spacing`` (mm) for arrays; output: one column per class with its probability, and
``label``, the most probable class; with calibration scores in the head, ``prediction_set``
(the classes of the conformal set at param ``coverage``, ``|``-joined) and ``coverage``
(:mod:`medcl.serving.outputs`). Probabilities are temperature-calibrated when the head carries a
temperature (:mod:`medcl.fewshot.calibrate`).
"""

import mlflow
import numpy as np
import pandas as pd

from medcl.fewshot.heads import LinearHead
from medcl.data.normative import NormativeReference
from medcl.serving.inference import embed_inputs, load_encoder, read_meta, scan_inputs
from medcl.serving.outputs import with_prediction_sets


class FewShotModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.meta = read_meta(context.artifacts["meta"])
        self.encoder = load_encoder(context.artifacts["weights"], self.meta)
        ref = context.artifacts.get("normative")
        self.reference = NormativeReference.load(ref) if ref else None
        self.head = LinearHead.load(context.artifacts["head"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        feats = embed_inputs(self.encoder, scan_inputs(model_input), self.meta, (params or {}).get("spacing"),
                             self.reference)
        probs = self.head.predict_proba(feats)
        out = pd.DataFrame(probs, columns=[str(c) for c in self.head.classes_])
        out["label"] = np.asarray(self.head.classes_)[probs.argmax(1)]
        return with_prediction_sets(out, self.head, self.head.decision_function(feats), (params or {}).get("coverage"))


mlflow.models.set_model(FewShotModel())
