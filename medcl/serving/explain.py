"""``medcl predict --explain``: where the registered few-shot model looked, as a NIfTI map on
the scan's own voxel grid (so it overlays the source scan in any viewer).

A scan is read and preprocessed exactly as prediction does (:func:`medcl.data.ingest.read_scan`,
:func:`~medcl.data.ingest.preprocess`, registration included); the saliency of the predicted
class's score (the head's own, over its temperature) is computed on its evaluation view with MONAI
(:mod:`medcl.fewshot.saliency`: occlusion sensitivity or Grad-CAM on the encoder's last stage),
then taken back through the view's crop, the registration and the scan's affine."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medcl.augment import eval_view
from medcl.data.ingest import preprocess, read_scan
from medcl.data.normative import NormativeReference
from medcl.fewshot.embed import embed_views
from medcl.fewshot.saliency import image_to_scan, view_saliency, view_to_image
from medcl.serving.inference import check_reference, data_config, model_input

__all__ = ["explain_scan", "saliency_name"]


def saliency_name(index: int, scan: str | Path) -> str:
    """``NNN_<file or folder name>_saliency.nii.gz`` (the user's own name, never a header field)."""
    name = Path(scan).name
    for ext in (".nii.gz", ".nii"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    return f"{index:03d}_{name or 'scan'}_saliency.nii.gz"


def explain_scan(encoder, head, meta: dict, scan: str | Path, out_path: Path, method: str = "occlusion",
                 reference: NormativeReference | None = None) -> dict:
    """Write the saliency map of the predicted class of ``scan`` to ``out_path`` (float32 NIfTI
    with the scan's affine and grid); returns ``{"saliency", "class", "method"}``. ``reference``:
    the model's normative reference, when it was trained on deviation maps."""
    check_reference(meta, reference, str(scan))
    cfg = data_config(meta)
    data, affine = read_scan(Path(scan), cfg)
    pre = preprocess(data, affine, cfg)
    view = eval_view(model_input(pre, reference, str(scan)), pre.mask, meta["view_size"])
    proba = head.predict_proba(embed_views(encoder, [view]))[0]
    c = int(np.argmax(proba))
    sal = view_saliency(encoder, head, view, c, method)
    on_scan = image_to_scan(view_to_image(sal, pre.mask), pre.affine, pre.transform, data.shape[:3], affine)
    img = nib.Nifti1Image(on_scan.astype(np.float32), affine)
    img.header["descrip"] = f"medcl saliency {method} class {head.classes_[c]}"[:79].encode()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out_path))
    return {"saliency": str(out_path), "class": str(head.classes_[c]), "method": method}
