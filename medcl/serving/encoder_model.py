"""MLflow model-from-code: the pretrained encoder (scans -> representations).

Logged with ``python_model=<this file>``; its weights travel as a state-dict artifact that is
loaded with ``weights_only=True``, so loading the model from the registry unpickles no code.
Input: one column of scans (bytes of NIfTI or DICOM files, 3D arrays, or paths under
``MEDCL_SERVE_ROOT``: :mod:`medcl.serving.scan_input`), param ``spacing`` for
arrays; output: one column ``h0..h{D-1}`` per feature.
"""

import mlflow
import pandas as pd

from medcl.data.normative import NormativeReference
from medcl.serving.inference import embed_inputs, load_encoder, read_meta, scan_inputs


class EncoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.meta = read_meta(context.artifacts["meta"])
        self.encoder = load_encoder(context.artifacts["weights"], self.meta)
        ref = context.artifacts.get("normative")
        self.reference = NormativeReference.load(ref) if ref else None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        feats = embed_inputs(self.encoder, scan_inputs(model_input), self.meta, (params or {}).get("spacing"),
                             self.reference)
        return pd.DataFrame(feats, columns=[f"h{i}" for i in range(feats.shape[1])])


mlflow.models.set_model(EncoderModel())
