"""The run config: YAML + overrides -> a typed RunConfig, or ONE ConfigError line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifelong.platform import cli
from lifelong.platform.config import (EngineConfig, OptimConfig, RunConfig, StreamConfig,
                                      TrainConfig, build_config, flatten, load_config)
from lifelong.platform.errors import ConfigError
from lifelong.strategies.ewc import EWCConfig
from lifelong.strategies.replay import ReplayConfig

EWC_YAML = """\
stream:
  dataset: digits
  scenario: split
  n_tasks: 3
  classes_per_task: 2
  setting: task
model:
  hidden: [64, 64]
strategy:
  name: ewc
  lam: 100.0
optim:
  name: sgd
  lr: 0.05
train:
  epochs: 5
  batch_size: 32
seed: 3
"""


@pytest.fixture
def ewc_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "ewc.yaml"
    path.write_text(EWC_YAML)
    return path


def config_error(path, overrides=()) -> str:
    """The message of the ConfigError that load_config must raise; checked to be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"error is not one line: {message!r}"
    return message


# -- valid configs ------------------------------------------------------------------------------------

def test_defaults_load_without_a_file():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.stream == StreamConfig()
    assert cfg.optim == OptimConfig()
    assert cfg.train == TrainConfig()
    assert cfg.engine == EngineConfig()
    assert cfg.strategy.name == "naive"
    assert cfg.model.hidden == [400, 400]
    assert cfg.seed == 0


def test_yaml_values_are_typed(ewc_yaml):
    cfg = load_config(ewc_yaml)
    assert cfg.stream.dataset == "digits" and cfg.stream.scenario == "split"
    assert cfg.stream.n_tasks == 3 and cfg.stream.setting == "task"
    assert cfg.model.hidden == [64, 64]
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 32
    assert cfg.seed == 3
    # the strategy group's schema is the chosen strategy's own Config, defaults filled in
    assert isinstance(cfg.strategy, EWCConfig)
    assert cfg.strategy.lam == 100.0
    assert cfg.strategy.mode == "separate"
    assert cfg.strategy.fisher_samples is None  # every training row
    # groups the file does not mention keep their defaults
    assert cfg.engine == EngineConfig()


def test_override_beats_yaml_and_is_converted_to_the_schema_type(ewc_yaml):
    cfg = load_config(ewc_yaml, ["strategy.lam=50", "train.epochs=2", "optim.lr=0.5",
                                 "model.hidden=[8,4]"])
    assert cfg.strategy.lam == 50.0
    assert type(cfg.strategy.lam) is float
    assert cfg.train.epochs == 2 and type(cfg.train.epochs) is int
    assert cfg.optim.lr == 0.5
    assert cfg.model.hidden == [8, 4]
    # untouched keys still come from the file
    assert cfg.train.batch_size == 32


def test_override_can_switch_strategy_and_its_schema(tmp_path):
    path = tmp_path / "naive.yaml"
    path.write_text("strategy:\n  name: naive\ntrain:\n  epochs: 2\n")
    cfg = load_config(path, ["strategy.name=replay", "strategy.buffer_size=7"])
    assert isinstance(cfg.strategy, ReplayConfig)
    assert cfg.strategy.name == "replay"
    assert cfg.strategy.buffer_size == 7
    assert cfg.train.epochs == 2


def test_foreign_strategy_options_in_one_file_are_refused(tmp_path):
    # a replay strategy given EWC's lam in the same file: refused, naming the key
    path = tmp_path / "mixed.yaml"
    path.write_text("strategy:\n  name: replay\n  lam: 5.0\n")
    message = config_error(path, [])
    assert message.startswith("strategy.lam:") and "replay" in message


def test_build_config_from_a_dict():
    cfg = build_config({"strategy": {"name": "replay", "buffer_size": 7},
                        "engine": {"backend": "torch"}})
    assert isinstance(cfg.strategy, ReplayConfig)
    assert cfg.strategy.buffer_size == 7
    assert cfg.strategy.replay_batch_size is None
    assert cfg.engine.backend == "torch"


def test_flatten_gives_dotted_string_params(ewc_yaml):
    flat = flatten(load_config(ewc_yaml))
    assert flat["strategy.lam"] == "100.0"
    assert flat["stream.dataset"] == "digits"
    assert flat["model.hidden"] == "[64, 64]"
    assert flat["seed"] == "3"


# -- errors: each is one line naming the offending key -------------------------------------------------

def test_unknown_top_level_key(ewc_yaml):
    message = config_error(ewc_yaml, ["foo.bar=1"])
    assert message.startswith("foo")
    assert "unknown key" in message


def test_unknown_key_inside_a_group_in_the_yaml_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("stream:\n  datset: digits\n")
    message = config_error(path)
    assert "stream.datset" in message
    assert "unknown key" in message


def test_unknown_strategy_key_names_it_and_lists_the_accepted_options(ewc_yaml):
    message = config_error(ewc_yaml, ["strategy.bogus=1"])
    assert message.startswith("strategy.bogus:")
    assert "'ewc'" in message
    for option in ("lam", "mode", "decay", "fisher_samples", "fisher_batch_size"):
        assert option in message


def test_strategy_key_of_another_strategy_is_unknown():
    message = config_error(None, ["strategy.name=replay", "strategy.lam=3"])
    assert message.startswith("strategy.lam:")
    assert "'replay'" in message
    for option in ("buffer_size", "replay_batch_size", "seed"):
        assert option in message


def test_strategy_without_options_says_so():
    message = config_error(None, ["strategy.name=naive", "strategy.lam=3"])
    assert message.startswith("strategy.lam:")
    assert "no options" in message


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("seed=abc", "seed"),
    ("optim.lr=fast", "optim.lr"),
    ("stream.n_tasks=abc", "stream.n_tasks"),
])
def test_wrong_type(ewc_yaml, override, key):
    message = config_error(ewc_yaml, [override])
    assert message.startswith(f"{key}:")
    assert "abc" in message or "fast" in message


def test_wrong_type_of_a_strategy_option(ewc_yaml):
    message = config_error(ewc_yaml, ["strategy.lam=abc"])
    assert message.startswith("strategy.lam:")


def test_wrong_type_in_the_yaml_file(tmp_path):
    path = tmp_path / "bad_type.yaml"
    path.write_text("train:\n  epochs: abc\n")
    assert config_error(path).startswith("train.epochs:")


def test_group_replaced_by_a_scalar_names_the_group():
    # `train=5` replaces the whole train group with an int. The contract of load_config is
    # one line naming the key; the key here is `train`, not an unknown "?".
    message = config_error(None, ["train=5"])
    assert message.startswith("train"), message
    assert not message.startswith("?"), message


def test_unknown_strategy_name_lists_known_strategies(ewc_yaml):
    message = config_error(ewc_yaml, ["strategy.name=nope"])
    assert message.startswith("strategy.name:")
    assert "'nope'" in message
    for known in ("ewc", "joint", "naive", "replay"):
        assert known in message


def test_unknown_stream_dataset():
    message = config_error(None, ["stream.dataset=cifar10"])
    assert message.startswith("stream.dataset:")
    assert "cifar10" in message
    for known in ("mnist", "fashion_mnist", "digits"):
        assert known in message


def test_unknown_stream_scenario():
    message = config_error(None, ["stream.scenario=rotated"])
    assert message.startswith("stream.scenario:")
    assert "rotated" in message and "permuted" in message and "split" in message


@pytest.mark.parametrize("key, bad, allowed", [
    ("optim.name", "rmsprop", ("sgd", "adam")),
    ("model.activation", "gelu", ("relu", "tanh")),
    ("stream.setting", "online", ("task", "domain", "class")),
    ("engine.backend", "gloo", ("deepspeed", "torch")),
])
def test_bad_choice_values(key, bad, allowed):
    message = config_error(None, [f"{key}={bad}"])
    assert message.startswith(f"{key}:")
    assert bad in message
    for choice in allowed:
        assert choice in message


@pytest.mark.parametrize("overrides, key", [
    (["strategy.name=ewc", "strategy.mode=offline"], "strategy.mode"),
    (["strategy.name=replay", "strategy.buffer_size=0"], "strategy.buffer_size"),
])
def test_bad_strategy_values_are_refused_by_the_config_itself(overrides, key):
    # config.py promises everything is checked before any compute starts; the strategies'
    # own value checks must therefore run at load time, not only when a (Ray) worker
    # constructs the strategy after the MLflow run has been created.
    message = config_error(None, overrides)
    assert key in message


@pytest.mark.parametrize("overrides, key", [
    (["train.epochs=0"], "train.epochs"),
    (["train.batch_size=-1"], "train.batch_size"),
    (["engine.workers=0"], "engine.workers"),
    (["engine.zero_stage=4"], "engine.zero_stage"),
    (["optim.lr=0"], "optim.lr"),
    (["model.hidden=[16,0]"], "model.hidden"),
    (["stream.train_samples_per_task=0"], "stream.train_samples_per_task"),
])
def test_out_of_range_values(overrides, key):
    assert config_error(None, overrides).startswith(f"{key}:")


def test_a_storage_url_is_refused_checkpoints_need_a_mounted_directory():
    message = config_error(None, ["engine.storage_path=s3://bucket/prefix"])
    assert message == ("engine.storage_path: must be a directory (on a cluster, one every node "
                       "mounts), got 's3://bucket/prefix'")
    assert load_config(None, ["engine.storage_path=/mnt/shared/ckpt"]).engine.storage_path == "/mnt/shared/ckpt"


def test_split_with_too_many_classes(ewc_yaml):
    # digits has 10 classes; 6 tasks x 2 classes needs 12
    message = config_error(ewc_yaml, ["stream.n_tasks=6"])
    assert message.startswith("stream.n_tasks:")
    assert "12" in message and "10" in message


def test_split_with_too_many_classes_per_task():
    message = config_error(None, ["stream.scenario=split", "stream.n_tasks=3",
                                  "stream.classes_per_task=4"])
    assert message.startswith("stream.n_tasks:")


def test_permuted_ignores_classes_per_task():
    cfg = load_config(None, ["stream.scenario=permuted", "stream.n_tasks=10",
                             "stream.classes_per_task=4"])
    assert cfg.stream.n_tasks == 10


@pytest.mark.parametrize("override", ["foo", "train.epochs", "=3"])
def test_malformed_override(override):
    message = config_error(None, [override])
    assert repr(override) in message
    assert "key=value" in message


def test_override_with_unparseable_value_is_a_config_error():
    # A value that is not valid YAML must give the usual one-line ConfigError (exit 2 on the
    # CLI), not a yaml.parser.ParserError traceback.
    message = config_error(None, ["model.hidden=[1,"])
    assert "model.hidden" in message


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    message = config_error(missing)
    assert "not found" in message
    assert str(missing) in message


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stream:\n  dataset: [mnist\n  scenario: split\n")
    message = config_error(path)
    assert str(path) in message
    assert "not valid YAML" in message


def test_yaml_whose_top_level_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- stream\n- model\n")
    message = config_error(path)
    assert str(path) in message
    assert "mapping" in message


# -- the CLI turns a ConfigError into one stderr line and exit code 2 ------------------------------------

def test_cli_run_with_a_bad_override_exits_2_with_one_line(ewc_yaml, capsys):
    code = cli.main(["run", str(ewc_yaml), "train.epochs=abc"])
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lifelong: error:")
    assert "train.epochs" in lines[0]
    assert captured.out == ""


def test_cli_run_with_a_missing_file_exits_2(tmp_path, capsys):
    code = cli.main(["run", str(tmp_path / "absent.yaml")])
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("lifelong: error:")
    assert "absent.yaml" in lines[0]


def test_choosing_another_strategy_by_override_starts_its_group_afresh():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "permuted_mnist_ewc.yaml"
    assert load_config(path, ["strategy.name=naive"]).strategy.name == "naive"
    replay = load_config(path, ["strategy.name=replay", "strategy.buffer_size=10"]).strategy
    assert replay.name == "replay" and replay.buffer_size == 10
    ewc = load_config(path, ["strategy.lam=5"]).strategy
    assert ewc.name == "ewc" and ewc.lam == 5.0 and ewc.mode == "separate"  # same strategy: merged


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")))
def test_every_shipped_config_is_valid(name):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.stream.n_tasks >= 2
