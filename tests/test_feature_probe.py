"""bench/feature_probe.py redraws each demo subject's simulation parameters from its random
streams; the draws must be the ones the simulation applied (same streams, same order), checked
against what medcl.data.demo's own functions do with those streams."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from medcl.data import demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("feature_probe", ROOT / "bench" / "feature_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("index", [0, 7, 123])
def test_redrawn_parameters_are_the_simulated_ones(probe, index):
    p = probe.subject_params("lesion", 0, index)
    rngs = demo.subject_rngs(0, index)
    # apply_contrast: gain * v ** gamma on the 0..1 template scale
    out = demo.apply_contrast(np.array([0.25, 1.0], np.float32), rngs["contrast"])
    assert out[1] == pytest.approx(p["gain"], rel=1e-6)
    assert np.log(out[0] / out[1]) / np.log(0.25) == pytest.approx(p["gamma"], rel=1e-4)
    # apply_bias_field: exp of a smooth field whose largest |log| is the drawn amplitude
    field = demo.apply_bias_field(np.ones((9, 9, 9), np.float32), rngs["bias"])
    assert float(np.abs(np.log(field)).max()) == pytest.approx(p["bias"], rel=1e-4)
    path = demo.sample_pathology("lesion", demo.subject_rngs(0, index)["pathology"])
    assert p["lesion"] == path.lesion_contrast and 0.6 <= p["lesion"] <= 0.95
    assert set(p) == set(probe.PARAMS)


def test_subjects_differ_and_source_names_map_to_indices(probe, tmp_path):
    assert probe.subject_params("healthy", 0, 1)["gamma"] != probe.subject_params("healthy", 0, 2)["gamma"]
    (tmp_path / "nifti").mkdir()
    for i, text in ((0, b"a"), (41, b"b")):
        (tmp_path / "nifti" / f"sub-{demo.subject_id(i)}.nii").write_bytes(text)
    index = probe.source_index(tmp_path)
    assert sorted(index.values()) == [0, 41]
