"""pointdr2.config: inheritance, overrides, unknown keys, dumps."""

import pytest
import yaml

from pointdr2.config import DEFAULTS, ConfigError, dump_config, load_config


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_and_attribute_access():
    cfg = load_config(None)
    assert cfg.train.epochs == DEFAULTS["train"]["epochs"]
    assert cfg["finetune"]["mode"] == "dr2net"
    assert cfg.finetune.alpha == [0.9, 0.1] and cfg.finetune.beta == [0.1, 0.9] and cfg.finetune.gain == "plain"
    assert cfg.finetune.output == "sum" and cfg.finetune.shape == "linear"


def test_base_inheritance_string_list_relative_and_deep_merge(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "a.yaml", "train: {epochs: 5, lr: 0.1}\nmodel: {name: pointmae, depth: 12}\n")
    write(tmp_path / "b.yaml", "train: {lr: 0.2}\nmodel: {depth: 6}\n")
    write(tmp_path / "sub" / "c.yaml", "_base_: [../a.yaml, ../b.yaml]\ntrain: {batch_size: 4}\n")
    write(tmp_path / "d.yaml", "_base_: sub/c.yaml\nmodel: {num_classes: 15}\n")
    cfg = load_config(tmp_path / "d.yaml")
    # later bases override earlier ones; the file overrides its bases; siblings survive (deep merge)
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.2 and cfg.train.batch_size == 4
    assert cfg.model == {"name": "pointmae", "depth": 6, "num_classes": 15}
    assert cfg.train.weight_decay == DEFAULTS["train"]["weight_decay"]


def test_overrides_parse_yaml_scalars(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "train.lr=1e-3", "finetune.mode=conventional",
                             "run.tensorboard=false", "finetune.cache_every=null", "dataset.root=/data/so",
                             "finetune.alpha=[1, 0.5]"])
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.finetune.mode == "conventional"
    assert cfg.run.tensorboard is False
    assert cfg.finetune.cache_every is None
    assert cfg.dataset.root == "/data/so"
    assert cfg.finetune.alpha == [1, 0.5]


def test_unknown_override_names_closest_keys():
    with pytest.raises(ConfigError, match=r"'train\.epoch'.*train\.epochs"):
        load_config(None, ["train.epoch=2"])
    with pytest.raises(ConfigError, match=r"trian\.lr.*train\.lr"):
        load_config(None, ["trian.lr=3"])
    # '+' adds a key explicitly
    assert load_config(None, ["+train.note=hello"]).train.note == "hello"


def test_unknown_key_in_file_and_in_base(tmp_path):
    write(tmp_path / "base.yaml", "train: {warmup_epoch: 3}\n")
    write(tmp_path / "top.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"train\.warmup_epoch.*train\.warmup_epochs"):
        load_config(tmp_path / "top.yaml")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    write(tmp_path / "bad.yaml", "train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    write(tmp_path / "loop1.yaml", "_base_: loop2.yaml\n")
    write(tmp_path / "loop2.yaml", "_base_: loop1.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop1.yaml")
    write(tmp_path / "nobase.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "nobase.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="section"):
        load_config(None, ["train=3"])


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "model.name=pointmae"])
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    again = yaml.safe_load(out.read_text())
    assert again["train"]["epochs"] == 7 and again["model"]["name"] == "pointmae"
    # the dump itself is a valid config file
    assert load_config(out).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: expected a number, got 'abc' (str)"),
    ("train.lr=-1", "train.lr: expected a positive number, got -1"),
    ("train.batch_size=0", "train.batch_size: expected a positive number, got 0"),
    ("finetune.alpha=[1]", "finetune.alpha: expected a list of 2 numbers, got [1] (list)"),
    ("train.deterministic=3", "train.deterministic: expected true or false, got 3 (int)"),
    ("finetune.shape=[1, 2]", "finetune.shape: expected text, got [1, 2] (list)"),
])
def test_values_are_checked_by_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_checked_values_that_pass():
    cfg = load_config(None, ["train.lr=0.1", "train.warmup_epochs=0.5", "run.dir=2024", "finetune.alpha=[1, 0.5]"])
    assert cfg.train.lr == 0.1 and cfg.train.warmup_epochs == 0.5 and cfg.finetune.alpha == [1, 0.5]
    assert cfg.run.dir == "2024"  # a number given for a text key is that text


def test_did_you_mean_names_the_closest_choices_or_the_fallback():
    from pointdr2.hints import did_you_mean

    assert did_you_mean("epoch", ["epochs", "lr", "seed"], prefix="train.") == "; did you mean train.epochs?"
    assert did_you_mean("zzz", ["epochs", "lr"], otherwise="; known: epochs, lr") == "; known: epochs, lr"
    assert did_you_mean("modelnet41", ["modelnet40", "s3dis"], cutoff=0.4) == "; did you mean modelnet40?"


@pytest.mark.parametrize("override, message", [
    ("finetune.shape=zigzag", "finetune.shape: expected one of linear, cosine, step, got 'zigzag'"),
    ("finetune.mode=dr2nett", "finetune.mode: expected one of .*; did you mean dr2net"),
    ("train.amp=fp8", "train.amp: expected one of none, bf16, fp16"),
    ("train.epochs=2.5", "train.epochs: expected a whole number, got 2.5"),
    ("train.weight_decay=-0.1", r"train.weight_decay: expected a number >= 0, got -0.1"),
    ("train.label_smoothing=1", r"train.label_smoothing: expected a number in \[0, 1\), got 1"),
    ("finetune.tolerance=0", "finetune.tolerance: expected a positive number, got 0"),
    ("train.lr=-1", "train.lr: expected a positive number, got -1"),
])
def test_values_are_checked_by_key_with_their_range_or_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_whole_numbers_given_as_floats_become_ints():
    cfg = load_config(None, ["train.epochs=3.0", "train.seed=7"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int) and cfg.train.seed == 7


def test_a_key_named_like_a_config_method_is_refused():
    """cfg.finetune.update would return dict.update, not the value: such names are refused by key."""
    with pytest.raises(ConfigError, match=r"^model\.items: the key's name is taken"):
        load_config(None, ["+model.items=3"])
    with pytest.raises(ConfigError, match=r"^finetune\.update: "):
        load_config(None, ["+finetune.update=balanced"])
    assert load_config(None, ["+model.depth=3"]).model.depth == 3
