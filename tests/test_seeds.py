"""Seed variance of the demo (``demo.seeds``) and the measured pace of pretraining.

The demo with ``demo.seeds=2`` pretrains twice (``train.seed``, ``train.seed + 1``) and scores
each pretrained encoder and its own random-init encoder on the same episodes; ``summary.json``'s
``seeds`` block holds the per-seed numbers and their mean and sd. After 20 steps the training
loop prints its measured seconds per step and its expected finish (once), and the demo its own."""

import contextlib
import io
import json
import os
import re
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest

from medcl import tracking
from medcl.config import ConfigError, load_config
from medcl.data.cohort import Cohort
from medcl.train import pretrain
from medcl.train.callbacks import TIMED_STEPS, ProgressLog, StepTiming, format_duration

PACE = re.compile(r"^(?P<desc>.+): (?P<s>\d+\.\d\d) s/step over steps 3-20 \(after a 2-step warm-up\); "
                  r"(?P<left>\d+) steps to go, expected to finish at (?P<at>\d\d:\d\d:\d\d) \(in (?P<in>[^)]+)\)$")


def test_demo_seeds_is_checked():
    assert load_config(None, ["demo.seeds=3"]).demo.seeds == 3
    assert load_config(None, []).demo.seeds == 1
    with pytest.raises(ConfigError, match=r"^config key 'demo.seeds' must be >= 1, got 0$"):
        load_config(None, ["demo.seeds=0"])


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 12, 60, 1073, 3725)] == ["0 s", "12 s", "1 min 0 s", "17 min 53 s",
                                                                     "1 h 02 min"]


def test_pace_line_comes_once_after_step_20_and_not_before(capsys):
    """The callback alone, step by step: nothing printed through step 19, one line at step 20,
    nothing more after; ``on_timing`` gets the same numbers."""
    seen: list[StepTiming] = []
    log = ProgressLog(100, "pretrain simclr", True, seen.append)
    state = SimpleNamespace(step=0, epoch=0)
    log.on_train_start(state)
    printed = []
    for step in range(1, 31):
        state.step = step
        log.on_log(state, step - 1, {"loss": 1.0})
        log.on_step_end(state)
        printed.append(capsys.readouterr().out)
    log.on_train_end(state)
    assert all(p == "" for i, p in enumerate(printed) if i != TIMED_STEPS - 1)
    m = PACE.match(printed[TIMED_STEPS - 1].strip())
    assert m and m["desc"] == "pretrain simclr" and int(m["left"]) == 80
    assert len(seen) == 1 and seen[0].last == 20 and seen[0].first == 3 and seen[0].steps_left == 80
    assert f"{seen[0].finish:%H:%M:%S}" == m["at"]


def test_pretraining_prints_its_pace_once(tiny_cohort, tmp_path, capsys):
    """A real run of 24 steps (6 scans, 2 pairs a step, 8 epochs): the line appears once, with a
    parseable finish time a few seconds ahead; without progress it is not printed."""
    cfg = load_config(None, ["augment.view_size=16", "model.widen_factor=0.125", "train.epochs=8",
                             "train.batch_size=2", "train.num_workers=0", "train.checkpoint_every_epoch=false"])
    seen: list[StepTiming] = []
    result = pretrain(cfg, Cohort.load(tiny_cohort), tmp_path / "a", progress=True, on_timing=seen.append)
    out = capsys.readouterr().out
    assert result.steps == 24
    lines = [line for line in out.splitlines() if "s/step" in line]
    assert len(lines) == 1, out
    m = PACE.match(lines[0].strip())
    assert m and int(m["left"]) == 4 and m["desc"] == "pretrain simclr", lines[0]
    at = datetime.strptime(m["at"], "%H:%M:%S").time()
    assert at == seen[0].finish.replace(microsecond=0).time() and seen[0].s_per_step > 0
    pretrain(cfg, Cohort.load(tiny_cohort), tmp_path / "b", progress=False, on_timing=seen.append)
    assert "s/step" not in capsys.readouterr().out and len(seen) == 2


# the tiny demo of tests/test_e2e.py, with 2 pairs a step so that each seed runs 24 steps (9
# train scans: 4 steps an epoch, 6 epochs) and prints its pace; no PDF, no t-SNE (not under test)
TINY_SEEDS = ["demo.n_subjects=18", "data.spacing=6.0", "augment.view_size=16", "model.widen_factor=0.25",
              "train.epochs=6", "train.batch_size=2", "train.num_workers=0", "fewshot.shots=1,2",
              "fewshot.n_episodes=20", "fewshot.n_query=1", "fewshot.logreg_episodes=10", "fewshot.n_boot=200",
              "fewshot.scratch_episodes=3", "fewshot.scratch_steps=5", "fewshot.budget_random=20",
              "fewshot.pdf=false", "fewshot.embedding_map=none", "demo.seeds=2", "train.seed=3"]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    from medcl.pipelines.demo import run_demo

    out = tmp_path_factory.mktemp("seeds")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config(None, TINY_SEEDS)
    printed, bars = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(bars):
        summary = run_demo(cfg, out, tracking.resolve_uri(None, out), progress=True)
    return cfg, out, summary, printed.getvalue()


def test_two_seeds_give_two_entries_that_differ(two_seeds):
    _, out, summary, _ = two_seeds
    seeds = json.loads((out / "summary.json").read_text())["seeds"]
    assert seeds == json.loads(json.dumps(summary["seeds"]))
    assert seeds["n"] == 2 and seeds["train_seeds"] == [3, 4]
    first, second = seeds["per_seed"]
    assert [first["train_seed"], second["train_seed"]] == [3, 4]
    assert set(first) == set(second) == {"train_seed", "pretrained", "random_init", "probe"}
    for e in (first, second):
        for src in ("pretrained", "random_init"):
            assert set(e[src]) == {"1", "2"}
            for r in e[src].values():
                assert set(r) == {"balanced_accuracy", "ci95"} and r["ci95"][0] <= r["balanced_accuracy"] <= r["ci95"][1]
        assert set(e["probe"]) == {"pretrained", "random_init"}
    assert first["pretrained"] != second["pretrained"] and first["random_init"] != second["random_init"]
    # the first seed is the demo as with one seed: its numbers are the summary's few-shot numbers
    for src in ("pretrained", "random_init"):
        for k, r in summary["fewshot"][src].items():
            assert first[src][k] == {"balanced_accuracy": r["balanced_accuracy"], "ci95": r["ci95"]}
        assert first["probe"][src]["balanced_accuracy"] == summary["fewshot_ceiling"][src]["balanced_accuracy"]


def test_mean_and_sd_are_numpys(two_seeds):
    _, _, summary, _ = two_seeds
    seeds = summary["seeds"]
    for src in ("pretrained", "random_init"):
        assert set(seeds["mean_sd"][src]) == {"1", "2"}
        for k, r in seeds["mean_sd"][src].items():
            v = np.array([e[src][k]["balanced_accuracy"] for e in seeds["per_seed"]])
            assert r["mean"] == pytest.approx(np.mean(v), abs=1e-12)
            assert r["sd"] == pytest.approx(np.std(v, ddof=1), abs=1e-12)


def test_further_seeds_are_scored_on_the_same_episodes(two_seeds):
    """The primary-head-only scoring of the further seeds gives the full suite's numbers when
    given the first seed's features: the same episodes, the same bootstrap."""
    from medcl.fewshot.seeds import primary_only, seed_entry

    cfg, out, summary, _ = two_seeds
    saved = np.load(out / "features.npz")
    features = {src: saved[f"features_{src}"] for src in ("pretrained", "random_init")}
    again = seed_entry(cfg, 3, primary_only(cfg, features, saved["labels"], saved["subjects"]))
    assert json.loads(json.dumps(again)) == summary["seeds"]["per_seed"][0]


def test_each_seed_has_its_own_pretraining_run_and_one_registered_encoder(two_seeds):
    from mlflow import MlflowClient

    _, out, summary, _ = two_seeds
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("medcl-pretrain")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["medcl.train_seed"] for r in runs) == ["3", "4"]
    assert all("pretrain/s_per_step" in r.data.metrics for r in runs)
    assert len(client.search_model_versions("name='medcl-encoder'")) == 1
    assert (out / "pretrain" / "encoder.pt").exists() and (out / "pretrain_seed4" / "encoder.pt").exists()
    assert "seeds" in summary["timings_seconds"]


def test_the_demo_prints_each_seeds_pace_and_its_expected_finish(two_seeds):
    *_, printed = two_seeds
    lines = printed.splitlines()
    paces = [m for m in map(PACE.match, lines) if m]
    assert len(paces) == 2 and all(int(m["left"]) == 4 for m in paces)
    finish = [line for line in lines if line.startswith("demo: expected to finish at ")]
    assert len(finish) == 2
    m = re.match(r"demo: expected to finish at (\d\d:\d\d:\d\d) \(in [^)]+\): (\d+) pretraining steps to go "
                 r"over (\d) seed\(s\)", finish[0])
    assert m and datetime.strptime(m[1], "%H:%M:%S") and (m[2], m[3]) == ("28", "2")


def test_the_demo_prints_the_seed_spread_only_for_several_seeds(capsys):
    from medcl.report.content import seed_spread_lines

    spread = {"n": 3, "train_seeds": [0, 1, 2],
              "mean_sd": {"pretrained": {"5": {"mean": 0.61, "sd": 0.025}},
                          "random_init": {"5": {"mean": 0.52, "sd": 0.011}}}}
    print("\n".join(seed_spread_lines(spread)))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "over 3 pretraining seeds [0, 1, 2] (mean ± sd):"
    assert out[1] == "K= 5  pretrained 0.610 ± 0.025   random init 0.520 ± 0.011"
    assert seed_spread_lines({"n": 1, "train_seeds": [0], "mean_sd": spread["mean_sd"]}) == []


def test_the_report_notes_the_seed_spread_only_for_several_seeds():
    from medcl.report.content import seed_spread_lines

    spread = {"n": 2, "train_seeds": [0, 1],
              "mean_sd": {"pretrained": {"5": {"mean": 0.6, "sd": 0.02}}, "random_init": {"5": {"mean": 0.5, "sd": 0.01}}}}
    (note,) = seed_spread_lines(spread, report=True)
    assert "Over 2 pretraining seeds [0, 1]" in note and "pretrained 0.600 ± 0.020" in note and "random init 0.500" in note
    assert seed_spread_lines({**spread, "n": 1}, report=True) == []


def test_demo_expected_finish_stretches_with_a_slow_pace(capsys):
    """What follows pretraining is allowed for at the pace it was measured at, and stretched by a
    slower step (a loaded machine took 224 s after pretraining at 1.79 s/step, not 90 s)."""
    from medcl.pipelines.demo import ALLOWANCE_S_PER_STEP, FEWSHOT_ALLOWANCE_S, SEED_EVAL_ALLOWANCE_S, DemoClock

    def after(s_per_step: float, n_seeds: int = 1) -> float:
        clock = DemoClock(n_seeds, show=False)
        before = datetime.now()
        clock.estimate(0, StepTiming(s_per_step, 3, 20, 0, 90, before))
        return (clock.finish - before).total_seconds() - (n_seeds - 1) * 90 * s_per_step

    assert after(ALLOWANCE_S_PER_STEP) == pytest.approx(FEWSHOT_ALLOWANCE_S, abs=1.0)
    assert after(0.2) == pytest.approx(FEWSHOT_ALLOWANCE_S, abs=1.0)          # never promised faster
    slow = after(3 * ALLOWANCE_S_PER_STEP)
    assert slow == pytest.approx(3 * FEWSHOT_ALLOWANCE_S, abs=1.0)
    assert after(3 * ALLOWANCE_S_PER_STEP, n_seeds=3) == pytest.approx(
        3 * (FEWSHOT_ALLOWANCE_S + 2 * SEED_EVAL_ALLOWANCE_S), abs=1.0)
    DemoClock(1, show=True).estimate(0, StepTiming(1.79, 3, 20, 70, 90, datetime.now()))
    assert "and about 4 min 43 s for the few-shot evaluation" in capsys.readouterr().out
