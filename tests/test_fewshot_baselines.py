"""Baselines: raw-voxel PCA, the from-scratch 3D ResNet, and the linear probe on all labels."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from medcl.fewshot.baselines import linear_probe, pca_features, scratch_predictions
from medcl.fewshot.episodes import sample_episode_batch
from medcl.fewshot.stats import summarise


def test_pca_features_match_sklearn_up_to_sign():
    rng = np.random.default_rng(0)
    fit_on, other = rng.normal(size=(12, 300)), rng.normal(size=(5, 300))
    ours = pca_features(fit_on, other, 4)
    ref = PCA(4).fit(fit_on).transform(other)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-8)
    assert pca_features(fit_on, other, 100).shape == (5, 11)         # at most n - 1 components
    with pytest.raises(ValueError, match="300 voxels to fit on but 299"):
        pca_features(fit_on, other[:, :299], 4)


def test_linear_probe_is_grouped_by_subject():
    # labels random per subject, features identify the subject: only a subject leak beats chance
    # (folds that split a subject score ~1.0 here; grouped ones ~1/3, sd ~0.04 with 150 subjects)
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(150), 2)
    labels = np.repeat(rng.permutation(np.arange(150) % 3), 2).astype(str)
    X = rng.normal(size=(150, 16))[subjects] + 0.01 * rng.normal(size=(300, 16))
    r = summarise(linear_probe(X, labels, subjects, Cs=(1.0, 100.0)), n_boot=200)
    assert r["balanced_accuracy"] < 0.5 and r["ci95"][0] < 1 / 3
    # with class structure it is near perfect
    Xc = X + 4 * np.eye(3, 16)[np.unique(labels, return_inverse=True)[1]]
    assert summarise(linear_probe(Xc, labels, subjects), n_boot=0)["balanced_accuracy"] > 0.95


def test_scratch_resnet_learns_an_easy_task_on_every_episode():
    # the class is where a bright cube sits: a network trained on 3 shots finds it
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 6)
    views = torch.as_tensor(rng.normal(size=(18, 1, 16, 16, 16)).astype(np.float32) * 0.2)
    for i, c in enumerate(y):
        views[i, 0, 2 + 5 * c:6 + 5 * c, 4:12, 4:12] += 2.0
    labels, subjects = np.array(["a", "b", "c"])[y], np.arange(18)
    batch = sample_episode_batch(labels, subjects, 3, 3, 4, seed=0)
    p = scratch_predictions(views, labels, subjects, batch, widen=0.125, steps=25, lr=0.01, size=16, seed=0)
    assert p.proba.shape == (4, 9, 3)
    np.testing.assert_allclose(p.proba.sum(-1), 1.0, atol=1e-5)
    assert summarise(p, n_boot=0)["accuracy"] > 0.6
