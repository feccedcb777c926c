"""Few-shot heads against scikit-learn references on random data."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import cosine_similarity, euclidean_distances
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler, normalize

from medcl.fewshot.heads import HEADS, KNNHead, LinearHead, LogisticHead, PrototypeHead, deployable, make_head

# NearestCentroid also computes within-class spreads, which warn for one-sample classes
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:self.within_class_std_dev_:UserWarning")]


def _task(seed, n_per_class=(3, 5, 4), d=16, n_query=30, shift=0.0):
    """Random support/query data; uneven class sizes so class means differ in norm."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array(["AD", "CN", "MCI"]), n_per_class)
    X = rng.normal(size=(len(y), d)) + shift
    Xq = rng.normal(size=(n_query, d)) + shift
    return X, y, Xq


@pytest.mark.parametrize("seed", range(10))
def test_euclidean_prototype_is_nearest_centroid(seed):
    X, y, Xq = _task(seed, shift=2.0)
    head = PrototypeHead(metric="euclidean", centre=False).fit(X, y)
    ref = NearestCentroid().fit(X, y)
    np.testing.assert_array_equal(head.predict(Xq), ref.predict(Xq))
    np.testing.assert_allclose(head.prototypes_, ref.centroids_)


def test_euclidean_proba_is_softmax_of_negative_squared_distance_and_ignores_centring():
    X, y, Xq = _task(0, shift=1.0)
    expected = softmax(-euclidean_distances(Xq, NearestCentroid().fit(X, y).centroids_, squared=True), axis=1)
    for centre in (False, True):  # distances do not change under a common shift
        proba = PrototypeHead(metric="euclidean", centre=centre).fit(X, y).predict_proba(Xq)
        np.testing.assert_allclose(proba, expected, atol=1e-10)


@pytest.mark.parametrize("seed", range(10))
def test_cosine_one_shot_is_nearest_centroid_on_l2_normalised_features(seed):
    # With one shot every prototype is a unit vector, so for a unit query
    # |q - p|^2 = 2 - 2 cos(q, p): nearest centroid == highest cosine.
    X, y, Xq = _task(seed, n_per_class=(1, 1, 1))
    head = PrototypeHead(metric="cosine", centre=False).fit(X, y)
    ref = NearestCentroid().fit(normalize(X), y)
    np.testing.assert_array_equal(head.predict(Xq), ref.predict(normalize(Xq)))


@pytest.mark.parametrize("seed", range(10))
def test_cosine_k_shot_is_cosine_to_the_normalised_features_class_means(seed):
    # With K > 1 the class means of unit vectors have different norms, so the exact
    # equivalent is the cosine to NearestCentroid's centroids of the normalised features.
    X, y, Xq = _task(seed)
    head = PrototypeHead(metric="cosine", centre=False, temperature=3.0).fit(X, y)
    ref = NearestCentroid().fit(normalize(X), y)
    cos = cosine_similarity(Xq, ref.centroids_)
    np.testing.assert_array_equal(head.predict(Xq), ref.classes_[cos.argmax(1)])
    np.testing.assert_allclose(head.predict_proba(Xq), softmax(3.0 * cos, axis=1), atol=1e-10)


def test_cosine_differs_from_nearest_centroid_when_class_means_differ_in_norm():
    # Class A: two unit vectors at +-60 deg (mean (0.5, 0), norm 0.5); class B: one at 70 deg.
    # A query at 34 deg is 34 deg from A's direction and 36 deg from B: cosine says A, but the
    # Euclidean distance to A's short mean (0.421) exceeds that to B (0.382): NearestCentroid says B.
    unit = lambda deg: np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg))])
    X, y = np.stack([unit(60), unit(-60), unit(70)]), np.array(["A", "A", "B"])
    q = unit(34)[None]
    assert PrototypeHead(metric="cosine", centre=False).fit(X, y).predict(q)[0] == "A"
    assert NearestCentroid().fit(X, y).predict(q)[0] == "B"


def test_cosine_centring_equals_shifting_by_the_support_mean():
    X, y, Xq = _task(3, shift=5.0)
    mean = X.mean(axis=0)
    centred = PrototypeHead(centre=True).fit(X, y)
    manual = PrototypeHead(centre=False).fit(X - mean, y)
    np.testing.assert_allclose(centred.predict_proba(Xq), manual.predict_proba(Xq - mean), atol=1e-12)
    # and centring matters when all features share a large offset (the usual post-ReLU case)
    assert not np.allclose(centred.predict_proba(Xq), PrototypeHead(centre=False).fit(X, y).predict_proba(Xq))


def test_cosine_is_scale_invariant_per_row_without_centring():
    X, y, Xq = _task(4)
    rng = np.random.default_rng(0)
    head = PrototypeHead(centre=False).fit(X, y)
    scaled = PrototypeHead(centre=False).fit(X * rng.uniform(0.1, 10, (len(X), 1)), y)
    np.testing.assert_allclose(head.predict_proba(Xq), scaled.predict_proba(Xq * 7.0), atol=1e-12)


def test_temperature_sharpens_but_does_not_change_predictions():
    X, y, Xq = _task(5)
    soft = PrototypeHead(temperature=1.0).fit(X, y)
    sharp = PrototypeHead(temperature=50.0).fit(X, y)
    np.testing.assert_array_equal(soft.predict(Xq), sharp.predict(Xq))
    assert sharp.predict_proba(Xq).max(1).mean() > soft.predict_proba(Xq).max(1).mean()


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_logistic_head_matches_sklearn_pipeline(centre, C):
    X, y, Xq = _task(6, shift=1.0)
    steps = ([StandardScaler(with_std=False)] if centre else []) + [Normalizer()]
    ref = make_pipeline(*steps, LogisticRegression(C=C, max_iter=1000)).fit(X, y)
    head = LogisticHead(C=C, centre=centre).fit(X, y)
    np.testing.assert_array_equal(head.classes_, ref.classes_)
    np.testing.assert_allclose(head.predict_proba(Xq), ref.predict_proba(Xq), atol=1e-8)
    np.testing.assert_array_equal(head.predict(Xq), ref.predict(Xq))


@pytest.mark.parametrize("name,kwargs", [("prototype", {}), ("prototype", {"metric": "euclidean"}),
                                         ("logreg", {}), ("logreg", {"centre": False})])
def test_probabilities_sum_to_one_in_classes_order(name, kwargs):
    X, y, Xq = _task(7)
    head = make_head(name, **kwargs).fit(X, y)
    proba = head.predict_proba(Xq)
    assert proba.shape == (len(Xq), 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (proba >= 0).all()
    assert head.classes_.tolist() == ["AD", "CN", "MCI"]
    np.testing.assert_array_equal(head.predict(Xq), head.classes_[proba.argmax(1)])


def test_heads_learn_clear_structure():
    rng = np.random.default_rng(8)
    y = np.repeat([0, 1, 2], 5)
    centres = rng.normal(size=(3, 64)) * 3
    X, Xq = centres[y] + rng.normal(size=(15, 64)), centres[y] + rng.normal(size=(15, 64))
    for name in HEADS:
        assert (make_head(name).fit(X, y).predict(Xq) == y).mean() == 1.0


def test_make_head_and_argument_errors():
    assert isinstance(make_head("logreg", C=0.5), LogisticHead) and make_head("logreg", C=0.5).C == 0.5
    with pytest.raises(ValueError, match=r"unknown head 'svm'; known heads: knn, logreg, prototype, prototype_euclidean"):
        make_head("svm")
    with pytest.raises(TypeError, match=r"KNNHead\(\) got an unexpected keyword argument 'metric'"):
        make_head("knn", metric="cosine")
    assert make_head("logreg").C is None and make_head("prototype_euclidean").metric == "euclidean"
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        KNNHead(k=0)
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        PrototypeHead(metric="manhattan")
    with pytest.raises(ValueError, match="temperature"):
        PrototypeHead(temperature=0)
    with pytest.raises(ValueError, match="C must be"):
        LogisticHead(C=-1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        PrototypeHead().fit(np.ones((3, 2)), ["a", "a", "a"])
    for head in (PrototypeHead(), LogisticHead()):
        with pytest.raises(NotFittedError, match="not fitted"):
            head.predict(np.ones((1, 2)))
    X, y, _ = _task(9)
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        LogisticHead().fit(X, y).predict_proba(np.ones((2, 3)))


# --- LinearHead: the deployable form ------------------------------------------------------------

@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name,kwargs", [("prototype", {}), ("prototype", {"centre": False, "temperature": 4.0}),
                                         ("prototype", {"metric": "euclidean"}), ("logreg", {}),
                                         ("logreg", {"centre": False, "C": 5.0})])
def test_to_linear_gives_the_same_probabilities(name, kwargs, n_classes, tmp_path):
    X, y, Xq = _task(10, n_per_class=(4, 5, 3)[:n_classes] + (0,) * (3 - n_classes), shift=0.5)
    head = make_head(name, **kwargs).fit(X, y)
    linear = head.to_linear()
    np.testing.assert_allclose(linear.predict_proba(Xq), head.predict_proba(Xq), atol=1e-10)
    np.testing.assert_array_equal(linear.predict(Xq), head.predict(Xq))
    linear.save(tmp_path / "head.npz")
    loaded = LinearHead.load(tmp_path / "head.npz")  # allow_pickle=False inside
    assert loaded.classes_.tolist() == head.classes_.tolist()
    np.testing.assert_allclose(loaded.predict_proba(Xq), head.predict_proba(Xq), atol=1e-10)


def test_linear_head_errors(tmp_path):
    with pytest.raises(NotFittedError):
        PrototypeHead().to_linear()
    with pytest.raises(ValueError, match="weight"):
        LinearHead(["a", "b"], np.zeros(3), np.zeros((2, 4)), np.zeros(2), normalise=True)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a LinearHead"):
        LinearHead.load(tmp_path / "bad.npz")


# --- kNN, the LOSO choice of C, and the batched solver -------------------------------------------

from sklearn.model_selection import LeaveOneGroupOut  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from medcl.fewshot.logistic import fit_logistic, logits, loso_select_C, span_coordinates  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_knn_head_is_sklearn_distance_weighted_knn_on_cl2n_features(seed):
    X, y, Xq = _task(seed, n_per_class=(3, 4, 5), shift=2.0)
    head = KNNHead(k=3, temperature=7.0).fit(X, y)
    Z = lambda A: normalize(A - X.mean(0))                                  # noqa: E731
    ref = KNeighborsClassifier(3, metric="cosine", weights=lambda d: np.exp(7.0 * (1 - d)), algorithm="brute")
    ref.fit(Z(X), y)
    np.testing.assert_allclose(head.predict_proba(Xq), ref.predict_proba(Z(Xq)), atol=1e-10)
    np.testing.assert_array_equal(head.predict(Xq), ref.predict(Z(Xq)))


def test_knn_k_is_capped_at_the_smallest_class():
    X, y, Xq = _task(0, n_per_class=(1, 4, 4))
    assert KNNHead(k=3).fit(X, y).k_ == 1


@pytest.mark.parametrize("n_classes,C", [(2, 0.1), (2, 30.0), (3, 1.0), (4, 0.3), (4, 30.0)])
def test_batched_logistic_solves_sklearns_objective(n_classes, C):
    rng = np.random.default_rng(n_classes)
    Z = rng.normal(size=(3, 4 * n_classes, 6)) + 0.5
    y = np.tile(np.arange(n_classes), (3, 4))
    weight = np.ones(y.shape)
    weight[1, 0] = 0.0                                                         # a dropped sample
    coef, intercept = fit_logistic(Z, y, n_classes, C, weight)
    for b in range(3):
        keep = weight[b] > 0
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(Z[b][keep], y[b][keep])
        lg = logits(Z[b:b + 1], coef[b:b + 1], intercept[b:b + 1])[0]
        np.testing.assert_allclose(softmax(lg, axis=1), ref.predict_proba(Z[b]), atol=1e-6)
        if n_classes > 2:
            np.testing.assert_allclose(coef[b], ref.coef_, atol=1e-4)


def test_span_coordinates_keep_inner_products():
    rng = np.random.default_rng(0)
    A, Q = rng.normal(size=(2, 5, 40)), rng.normal(size=(2, 3, 40))
    za, zq = span_coordinates(A, Q)
    assert za.shape == (2, 5, 5)
    np.testing.assert_allclose(za @ za.transpose(0, 2, 1), A @ A.transpose(0, 2, 1), atol=1e-10)
    np.testing.assert_allclose(zq @ za.transpose(0, 2, 1), Q @ A.transpose(0, 2, 1), atol=1e-10)


def test_loso_choice_of_C_is_sklearns_leave_one_group_out():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 4)
    groups = np.arange(12)                                                  # one scan per subject ...
    groups[[1, 5]] = groups[[0, 4]]                                         # ... but two with 2 scans
    Cs = (0.1, 1.0, 10.0)
    for signal in (0.0, 1.5):                                                # chooses 0.1, then 10
        X = normalize(rng.normal(size=(12, 8)) + signal * np.eye(3, 8)[y])
        best, loss = loso_select_C(X[None], y[None], groups[None], 3, Cs)
        ref = []
        for C in Cs:
            nll = []
            for tr, te in LeaveOneGroupOut().split(X, y, groups):
                p = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X[tr], y[tr]).predict_proba(X[te])
                nll.extend(-np.log(p[np.arange(len(te)), y[te]]))
            ref.append(np.mean(nll))
        np.testing.assert_allclose(loss[0], ref, rtol=1e-4)
        assert best[0] == Cs[int(np.argmin(ref))]


def test_logistic_head_chooses_C_by_loso_when_shots_allow():
    X, y, Xq = _task(11, n_per_class=(3, 3, 3), shift=1.0)
    head = LogisticHead(C=None, Cs=(0.5, 5.0)).fit(X, y)
    assert head.C_ in (0.5, 5.0)
    Z = normalize(X - X.mean(0))
    _, yi = np.unique(y, return_inverse=True)
    expected = loso_select_C(span_coordinates(Z[None]), yi[None], np.arange(9)[None], 3, (0.5, 5.0))[0][0]
    assert head.C_ == expected
    ref = LogisticRegression(C=head.C_, max_iter=1000).fit(Z, y)
    np.testing.assert_allclose(head.predict_proba(Xq), ref.predict_proba(normalize(Xq - X.mean(0))), atol=1e-8)
    one_shot = LogisticHead(C=None, C_fallback=2.0).fit(X[[0, 3, 6]], y[[0, 3, 6]])   # K = 1: LOSO impossible
    assert one_shot.C_ == 2.0
    with pytest.raises(ValueError, match="single subject"):
        loso_select_C(X[None, [0, 3, 6]], yi[None, [0, 3, 6]], np.arange(3)[None], 3, (1.0,))


# --- every head vectorised over episodes == the same head fitted episode by episode -------------

from medcl.fewshot.episodes import sample_episode_batch  # noqa: E402
from medcl.config import Config  # noqa: E402
from medcl.fewshot.suite import head_options  # noqa: E402


def test_the_head_table_is_what_evaluation_validation_and_reports_read():
    from medcl.config import Config
    from medcl.report.figures import HEAD_LABELS
    from medcl.validate import check_names

    assert list(HEADS) == ["prototype", "prototype_euclidean", "logreg", "knn"]
    assert all(HEAD_LABELS[name] == spec.label for name, spec in HEADS.items())
    cfg = Config()
    cfg.fewshot.heads = list(HEADS)
    check_names(cfg)
    assert [name for name in HEADS if HEADS[name].linear] == ["prototype", "prototype_euclidean", "logreg"]
    assert deployable("knn")[0] == "prototype" and deployable("logreg")[0] == "logreg"
    f = cfg.fewshot       # the config's options are options of the head classes
    assert {h: HEADS[h].make(**o).__class__ for h, o in head_options(f).items()} == {"logreg": LogisticHead,
                                                                                     "knn": KNNHead}


@pytest.mark.parametrize("head", list(HEADS))
def test_batched_heads_equal_the_per_episode_heads(head):
    """What evaluation runs (each spec's ``predict_episodes`` with the config's options) equals
    the per-scan head of the same spec (what is deployed) fitted episode by episode."""
    rng = np.random.default_rng(4)
    labels = np.repeat(np.array(["AD", "CN", "MCI", "FTD"]), [7, 9, 8, 10])
    subjects = np.arange(len(labels))
    X = rng.normal(size=(len(labels), 24)) + 1.5 * np.eye(4, 24)[np.unique(labels, return_inverse=True)[1]] + 3.0
    batch = sample_episode_batch(labels, subjects, 3, 4, 12 if head == "logreg" else 60, seed=1, n_way=3)
    options = head_options(Config().fewshot).get(head, {})
    proba = HEADS[head].predict_episodes(X, batch, subjects, **options)
    for e in range(batch.n_episodes):
        s, q = batch.support[e], batch.query[e][batch.query[e] >= 0]
        ref = HEADS[head].make(**options).fit(X[s], labels[s])
        cols = np.searchsorted(batch.class_names, ref.classes_)
        expected = ref.predict_proba(X[q])
        if head == "logreg":      # the same C; scikit-learn solved as tightly as medcl's Newton solver
            tight = LogisticRegression(C=ref.C_, tol=1e-10, max_iter=10_000).fit(ref._features(X[s]), labels[s])
            expected = tight.predict_proba(ref._features(X[q]))
        np.testing.assert_allclose(proba[e, : len(q)][:, cols], expected, atol=1e-6)
        assert proba[e, : len(q)].sum(1) == pytest.approx(1.0)
        others = np.setdiff1d(np.arange(4), batch.classes[e])
        assert (proba[e][:, others] == 0).all() and (proba[e, len(q):] == 0).all()


@pytest.mark.parametrize("n_way,k_shot", [(2, 3), (3, 1), (2, 1), (3, 2)])
def test_logreg_episodes_choose_C_and_probabilities_as_sklearn(n_way, k_shot):
    """The vectorised head on 2- and 3-class episodes, K = 1 (no LOSO: ``C``) and K >= 2 (C by
    leave-one-subject-out log-loss, every fold and C fitted by scikit-learn solved tightly)."""
    from sklearn.model_selection import LeaveOneGroupOut
    from medcl.fewshot.batched import predict_logreg
    from medcl.fewshot.ops import l2_normalise

    rng = np.random.default_rng(n_way * 10 + k_shot)
    labels = np.repeat(np.array(["a", "b", "c"][:n_way]), 8)
    subjects = np.arange(len(labels))
    X = rng.normal(size=(len(labels), 6)) + 1.2 * np.eye(n_way, 6)[np.unique(labels, return_inverse=True)[1]]
    batch = sample_episode_batch(labels, subjects, k_shot, 3, 6, seed=2)
    Cs = (0.1, 1.0, 10.0)
    proba, chosen = predict_logreg(X, batch, subjects, Cs, 2.0, return_C=True)
    tight = dict(tol=1e-10, max_iter=10_000)
    for e in range(batch.n_episodes):
        s, q = batch.support[e], batch.query[e][batch.query[e] >= 0]
        Z = l2_normalise(X[s] - X[s].mean(0))
        C = 2.0
        if k_shot >= 2:
            loss = []
            for c in Cs:
                nll = [-np.log(LogisticRegression(C=c, **tight).fit(Z[tr], labels[s][tr]).predict_proba(Z[te])[0, np.searchsorted(np.unique(labels[s][tr]), labels[s][te][0])])
                       for tr, te in LeaveOneGroupOut().split(Z, groups=subjects[s])]
                loss.append(np.mean(nll))
            C = Cs[int(np.argmin(loss))]
        assert chosen[e] == C
        ref = LogisticRegression(C=C, **tight).fit(Z, labels[s])
        cols = np.searchsorted(batch.class_names, ref.classes_)
        np.testing.assert_allclose(proba[e, : len(q)][:, cols], ref.predict_proba(l2_normalise(X[q] - X[s].mean(0))),
                                   atol=1e-4)


def test_loso_fit_folds_with_padding_and_a_class_with_one_subject():
    from medcl.fewshot.logistic import loso_fit

    rng = np.random.default_rng(0)
    Z, y = rng.normal(size=(2, 8, 3)), np.tile([0, 0, 1, 1, 0, 1, 0, 1], (2, 1))
    groups, weight = np.tile(np.arange(8), (2, 1)), np.ones((2, 8))
    weight[1, 4:] = 0                                   # problem 1: 4 real rows, 4 padding rows
    best, loss, _, _ = loso_fit(Z, y, groups, 2, (0.5, 5.0), weight)
    alone = loso_fit(Z[1:, :4], y[1:, :4], groups[1:, :4], 2, (0.5, 5.0))
    assert best[1] == alone[0][0] and loss[1] == pytest.approx(alone[1][0], abs=1e-8)
    groups[0, :2] = 7                                   # problem 0: class 0 from subjects 7, 4, 6 ...
    groups[0, [4, 6]] = 7                               # ... all subject 7: a single subject
    with pytest.raises(ValueError, match="problem 0: some class has a single subject"):
        loso_fit(Z, y, groups, 2, (0.5, 5.0), weight)
