"""Checkpoints are read without unpickling code, written atomically, carry every random state,
and refuse to resume under a different config, each with a one-line error naming the file."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.config import config_to_dict, load_config
from medcl.train.checkpoint import CheckpointError, config_mismatch, save_atomic
from medcl.train.state import FORMAT, load_checkpoint, rng_state, set_rng_state


def _minimal(**extra) -> dict:
    ckpt = {"format": FORMAT, "method": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "scaler": {},
            "rng": rng_state(), "position": {"epoch": 0, "step_in_epoch": 1, "step": 1, "steps_per_epoch": 2,
                                             "world_size": 1},
            "mlflow_run_id": "abc", "config": config_to_dict(load_config()), "losses": [1.0]}
    ckpt.update(extra)
    return ckpt


class Payload:
    """Runs a shell command when unpickled: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save(_minimal(method={"w": torch.ones(2), "extra": Payload(marker)}), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused: the file holds pickled Python objects") and "\n" not in message
    assert "weights_only=True" in message and "system" in message          # names what it refused
    assert not marker.exists()


def test_a_good_checkpoint_round_trips(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_atomic(_minimal(), path)
    assert load_checkpoint(path)["mlflow_run_id"] == "abc"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]      # no temporary file left


@pytest.mark.parametrize("content,match", [
    (b"", "not a readable checkpoint"),
    (b"PK\x03\x04 truncated zip", "not a readable checkpoint"),
])
def test_broken_files_are_named(tmp_path, content, match):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path}: {match}"):
        load_checkpoint(path)


def test_not_a_medcl_checkpoint_or_incomplete(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="not a medcl checkpoint"):
        load_checkpoint(path)
    ckpt = _minimal()
    del ckpt["rng"], ckpt["scaler"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="checkpoint lacks scaler, rng"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "missing.pt")


def test_every_random_state_round_trips_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = tmp_path / "last.pt"
    save_atomic(_minimal(rng=rng_state()), path)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_resume_refuses_a_different_config():
    a = config_to_dict(load_config(None, ["train.method=moco"]))
    assert config_mismatch(a, config_to_dict(load_config(None, ["train.method=moco", "train.num_workers=4"]))) is None
    assert config_mismatch(a, config_to_dict(load_config(None, ["train.method=moco", "fewshot.n_episodes=3"]))) is None
    diff = config_mismatch(a, config_to_dict(load_config(None, ["train.method=moco", "train.lr=0.5"])))
    assert diff == "train.lr (0.001 in the checkpoint, 0.5 now)"


def test_cli_resume_errors_are_one_line(tmp_path, capsys):
    from medcl.cli import main

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "manifest.csv").write_text("scan_key,subject_key,label,split,shape,spacing,source_sha256\n")
    code = main(["pretrain", "--cohort", str(cohort), "--out", str(tmp_path / "out"), "--resume", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err == f"medcl: {tmp_path / 'out' / 'pretrain' / 'checkpoints' / 'last.pt'}: no checkpoint to resume from"
