"""MLflow model-from-code: the pretrained encoder (scans -> representations).

Logged with ``python_model=<this file>``; its weights travel as a state-dict artifact that is
loaded with ``weights_only=True``, so loading the model from the registry unpickles no code.
"""

import mlflow
import pandas as pd

from medcl.tracking.inference import embed_inputs, load_encoder, read_meta, scan_inputs


class EncoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.meta = read_meta(context.artifacts["meta"])
        self.encoder = load_encoder(context.artifacts["weights"], self.meta)

    def predict(self, context, model_input, params=None):
        feats = embed_inputs(self.encoder, scan_inputs(model_input), self.meta)
        return pd.DataFrame(feats, columns=[f"h{i}" for i in range(feats.shape[1])])


mlflow.models.set_model(EncoderModel())
