"""The run configuration: one typed schema (OmegaConf structured configs).

A run is described by YAML plus ``key=value`` overrides. Everything is checked
against the dataclasses below before any compute starts; the strategy group is
polymorphic, so its schema is the chosen strategy's own ``Config`` dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lifelong.platform.errors import ConfigError, first_line, require


@dataclass
class StreamConfig:
    """Which real data set, cut into which sequence of tasks."""

    dataset: str = "mnist"  # mnist | fashion_mnist | digits
    scenario: str = "permuted"  # permuted | split
    n_tasks: int = 5
    classes_per_task: int = 2  # split only
    setting: str = "domain"  # task | domain | class  (which labels the learner sees)
    train_samples_per_task: Optional[int] = None  # subsample for quick runs; None = all
    test_samples_per_task: Optional[int] = None
    data_dir: Optional[str] = None  # directory of IDX files; None = the data cache
    chunk_batches: int = 16  # batches per request to the stream actor
    prefetch: int = 4  # requests in flight per worker (backpressure bound)


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [400, 400])  # Linear widths
    activation: str = "relu"  # relu | tanh
    conv: list[int] = field(default_factory=list)  # channels of 3x3 stride-2 convs before them


@dataclass
class StrategyConfig:
    """Base of every strategy's config; ``name`` picks the strategy class."""

    name: str = "naive"


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw (decoupled weight decay)
    lr: float = 0.05
    momentum: float = 0.0  # sgd
    weight_decay: float = 0.0
    beta1: float = 0.9  # adam, adamw
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 128
    eval_batch_size: int = 2048
    log_every: int = 50  # steps between train-loss points in MLflow


@dataclass
class EngineConfig:
    workers: int = 1
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0..3
    backend: str = "deepspeed"  # deepspeed | torch (plain, unsharded reference)
    cpus_per_worker: Optional[int] = None  # None = share this machine's cores evenly
    max_failures: int = 2  # worker-group restarts from the last task boundary
    checkpoint_every: int = 1  # tasks between checkpoints (always after the last); resume goes back to the latest
    storage_path: Optional[str] = None  # checkpoints; None = ./.lifelong/ray; a filesystem every node mounts on clusters
    kernels: str = "auto"  # the fused update: auto (C/OpenMP on CPU, Triton on CUDA) | reference (plain torch)
    expert_parallel: int = 1  # MoE experts split across this many workers (1: every worker holds all)


@dataclass
class EvalConfig:
    """Which test sets a task boundary evaluates, and after which tasks."""

    tasks: str = "all"  # all (future tasks too: FWT is defined) | seen (tasks trained so far)
    every: int = 1  # evaluate after every k-th task, and always after the last


@dataclass
class ProbeConfig:
    """Plasticity probes (``lifelong/platform/probes.py``): per hidden layer, on a fixed
    probe batch of the current task, every ``every`` steps and at each task end."""

    enabled: bool = True
    every: int = 250  # steps between probes; 0 = at task ends only
    rows: int = 256  # probe batch size (training rows of the current task)
    dormant_tau: float = 0.1  # Sokar's dormancy threshold


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns.db"
    experiment: str = "lifelong"
    artifact_location: Optional[str] = None  # None = ./mlartifacts for local stores
    run_name: Optional[str] = None


@dataclass
class RunConfig:
    stream: StreamConfig = field(default_factory=StreamConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.activation": ("relu", "tanh"),
    "optim.name": ("sgd", "adam", "adamw"),
    "stream.setting": ("task", "domain", "class"),
    "engine.backend": ("deepspeed", "torch"),
    "engine.kernels": ("auto", "reference"),
    "eval.tasks": ("all", "seen"),
}


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file + dotted overrides -> a validated, typed ``RunConfig``.

    Raises ``ConfigError`` (one line, naming the key) on anything wrong.
    """
    raw = _read_raw(path, overrides)
    return build_config(raw)


def build_config(raw: DictConfig | dict[str, Any]) -> RunConfig:
    """Validate an untyped mapping against the schema (strategy schema included)."""
    from lifelong.strategies.registry import resolve_strategy

    raw = raw if isinstance(raw, DictConfig) else OmegaConf.create(raw)
    for group in RunConfig.__dataclass_fields__:
        value = raw.get(group) if group in raw else None
        if group != "seed" and value is not None and not isinstance(value, DictConfig):
            raise ConfigError(f"{group}: must be a mapping of options, got {value!r}")
    strategy_name = OmegaConf.select(raw, "strategy.name", default="naive")
    strategy_cls = resolve_strategy(str(strategy_name))
    schema = OmegaConf.structured(RunConfig)
    schema.strategy = OmegaConf.structured(strategy_cls.Config(name=str(strategy_name)))
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, strategy_cls)) from None
    cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _check_values(cfg)
    strategy_cls.check_config(cfg.strategy)
    strategy_cls.check_run(cfg.strategy, cfg)
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flatten(cfg: RunConfig) -> dict[str, str]:
    """``{"optim.lr": "0.05", ...}`` for MLflow params."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out


def read_overrides(overrides: Sequence[str]) -> DictConfig:
    """Dotted overrides alone, parsed but not validated (e.g. to find ``tracking.uri``)."""
    return _read_raw(None, overrides)


def _read_raw(path: Optional[str | Path], overrides: Sequence[str]) -> DictConfig:
    base = OmegaConf.create()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            base = OmegaConf.load(p)
        except Exception as err:  # yaml.YAMLError and friends
            raise ConfigError(f"{p}: not valid YAML ({first_line(err)})") from None
        if not isinstance(base, DictConfig):
            raise ConfigError(f"{p}: the top level must be a mapping of config groups")
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value")
    merged = base
    for item in overrides:
        try:
            override = OmegaConf.from_dotlist([item])
        except Exception as err:  # OmegaConf and YAML parser errors alike
            raise ConfigError(f"override {item!r}: cannot parse the value ({first_line(err)})") from None
        merged = _switch_strategy(merged, override)
        try:
            merged = OmegaConf.merge(merged, override)
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {first_line(err)}") from None
    return merged  # type: ignore[return-value]


def _switch_strategy(current: DictConfig, override: DictConfig) -> DictConfig:
    """Choosing another strategy by override starts its group afresh, so
    ``strategy.name=naive`` on an EWC config does not inherit EWC's options."""
    new = OmegaConf.select(override, "strategy.name", default=None)
    old = OmegaConf.select(current, "strategy.name", default=None)
    if new is None or new == old or "strategy" not in current:
        return current
    current = current.copy()
    del current["strategy"]
    return current


def _describe(err: OmegaConfBaseException, strategy_cls: type) -> str:
    key = getattr(err, "full_key", None) or "?"
    msg = first_line(err)
    if isinstance(err, ConfigKeyError):
        if key.startswith("strategy."):
            known = ", ".join(f for f in strategy_cls.Config.__dataclass_fields__ if f != "name")
            return f"{key}: unknown key (strategy '{strategy_cls.name}' accepts: {known or 'no options'})"
        return f"{key}: unknown key"
    return f"{key}: {msg}"


def _check_values(cfg: RunConfig) -> None:
    from lifelong.streams.registry import check_stream

    flat = flatten(cfg)
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}: {flat[key]!r} is not one of {', '.join(allowed)}")
    positive = ["stream.n_tasks", "train.epochs", "train.batch_size", "train.eval_batch_size",
                "train.log_every", "engine.workers", "stream.chunk_batches", "stream.prefetch",
                "eval.every", "engine.checkpoint_every"]
    for key in positive:
        require(int(flat[key]) >= 1, key, f"must be >= 1, got {flat[key]}")
    require(cfg.engine.zero_stage in (0, 1, 2, 3), "engine.zero_stage",
            f"must be 0, 1, 2 or 3, got {cfg.engine.zero_stage}")
    require(cfg.engine.max_failures >= -1, "engine.max_failures",
            f"must be >= 0, or -1 for no limit, got {cfg.engine.max_failures}")
    require("://" not in (cfg.engine.storage_path or ""), "engine.storage_path",
            f"must be a directory (on a cluster, one every node mounts), got {cfg.engine.storage_path!r}")
    require(cfg.optim.lr > 0, "optim.lr", f"must be > 0, got {cfg.optim.lr}")
    require(cfg.optim.momentum >= 0, "optim.momentum", f"must be >= 0, got {cfg.optim.momentum}")
    require(cfg.optim.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {cfg.optim.weight_decay}")
    for key in ("beta1", "beta2"):
        beta = getattr(cfg.optim, key)
        require(0 <= beta < 1, f"optim.{key}", f"must be in [0, 1), got {beta}")
    require(cfg.optim.eps > 0, "optim.eps", f"must be > 0, got {cfg.optim.eps}")
    require(cfg.probes.every >= 0, "probes.every", f"must be >= 0 (0 = task ends only), got {cfg.probes.every}")
    require(cfg.probes.rows >= 1, "probes.rows", f"must be >= 1, got {cfg.probes.rows}")
    require(not cfg.probes.enabled or bool(cfg.model.hidden or cfg.model.conv), "probes.enabled",
            "the plasticity probes need a hidden layer (model.hidden or model.conv); "
            "or set probes.enabled=false")
    require(cfg.probes.dormant_tau >= 0, "probes.dormant_tau", f"must be >= 0, got {cfg.probes.dormant_tau}")
    require(all(h >= 1 for h in cfg.model.hidden), "model.hidden",
            f"layer widths must be >= 1, got {list(cfg.model.hidden)}")
    require(all(c >= 1 for c in cfg.model.conv), "model.conv",
            f"channel counts must be >= 1, got {list(cfg.model.conv)}")
    check_stream(cfg.stream)
