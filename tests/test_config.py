import pytest

from medcl.config import ConfigError, config_to_dict, flatten, load_config
from medcl.validate import load_checked


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  temperature: 0.1\nfewshot:\n  shots: [1, 5]\n")
    cfg = load_config(f, ["train.epochs=7", "augment.view_size=32", "fewshot.shots=2,4"])
    assert cfg.train.epochs == 7 and cfg.train.temperature == 0.1
    assert cfg.augment.view_size == 32 and cfg.fewshot.shots == (2, 4)
    assert cfg.model.arch == "resnet10"
    assert flatten(config_to_dict(cfg))["train.epochs"] == 7


@pytest.mark.parametrize("override,named", [
    ("train.epochz=3", "train.epochz"),
    ("train.epochs=three", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("model.arch=vgg", "model.arch"),
    ("augment.crop_scale=[0.9, 0.5]", "augment.crop_scale"),
    ("train.batch_size=1", "train.batch_size"),
    ("nosection.x=1", "nosection"),
    ("train.method=simclrr", "train.method"),
    ("augment.cache=gpu", "augment.cache"),
    ("fewshot.heads=[prototype, svm]", "fewshot.heads"),
    ("fewshot.baselines=[radiomix]", "fewshot.baselines"),
    ("train.optimizer=adam", "train.optimizer"),
])
def test_bad_keys_and_values_are_one_line_errors_naming_the_key(override, named):
    with pytest.raises(ConfigError) as exc:
        load_checked(None, [override])
    assert named in str(exc.value) and "\n" not in str(exc.value)


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(f)


def test_shipped_configs_load():
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].joinpath("configs").rglob("*.yaml"))
    assert files, "configs/ ships at least one config"
    for f in files:
        load_checked(f)


@pytest.mark.parametrize("method,override,named", [
    ("moco", "train.queue_size=-1", "train.queue_size"),
    ("byol", "train.ema_momentum=1.5", "train.ema_momentum"),
    ("barlow_twins", "train.barlow_lambda=-1", "train.barlow_lambda"),
    ("vicreg", "train.vicreg_weights=[1, -1, 1]", "train.vicreg_weights"),
    ("triplet", "train.margin=-0.1", "train.margin"),
    ("margin", "train.pos_margin=2.0", "train.pos_margin"),
    ("npair", "train.npair_l2_reg=-1", "train.npair_l2_reg"),
    ("swav", "train.swav_epsilon=0", "train.swav_epsilon"),
    ("swav", "train.swav_queue_size=-1", "train.swav_queue_size"),
    ("vicreg", "augment.local_views=2", "augment.local_views' must be 0 for vicreg"),
    ("moco", "augment.local_views=2", "augment.local_views' must be 0 for moco"),
])
def test_each_method_checks_its_own_settings(method, override, named):
    with pytest.raises(ConfigError, match=named):
        load_checked(None, [f"train.method={method}", override])
    # another method does not read that setting, so it is not refused there
    other = "simclr" if method != "simclr" else "moco"
    load_checked(None, [f"train.method={other}", override])


@pytest.mark.parametrize("override,named", [
    ("augment.local_views=-1", "augment.local_views"), ("augment.local_scale=[0.5, 0.3]", "augment.local_scale"),
    ("augment.local_size=64", "augment.local_size' must be in \\[8, augment.view_size\\]")])
def test_multicrop_ranges(override, named):
    with pytest.raises(ConfigError, match=named):
        load_checked(None, ["augment.local_views=2", override])


def test_type_and_range_checks_need_no_registry():
    """config.load_config alone (no registry imported) still refuses bad types and ranges."""
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=0"])
