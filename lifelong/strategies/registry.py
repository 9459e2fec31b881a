"""Strategy names -> classes: built-ins, the ``lifelong.strategies`` entry point group,
or a dotted path (``mypkg.module:MyStrategy`` or ``mypkg.module.MyStrategy``)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from lifelong.platform.errors import ConfigError
from lifelong.strategies.base import Strategy

ENTRY_POINT_GROUP = "lifelong.strategies"


def builtin_strategies() -> dict[str, type[Strategy]]:
    from lifelong.strategies.cbp import ContinualBackprop
    from lifelong.strategies.ewc import EWC
    from lifelong.strategies.joint import Joint
    from lifelong.strategies.l2 import L2
    from lifelong.strategies.naive import Naive
    from lifelong.strategies.redo import ReDo
    from lifelong.strategies.replay import Replay
    from lifelong.strategies.shrink_perturb import ShrinkPerturb

    return {cls.name: cls for cls in (Naive, Joint, Replay, EWC, ContinualBackprop, ReDo, L2,
                                      ShrinkPerturb)}


def plugin_strategies() -> dict[str, type[Strategy]]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        _check_class(cls, f"entry point {ep.name!r}")
        found[ep.name] = cls
    return found


def available() -> dict[str, type[Strategy]]:
    """Every strategy reachable by name (built-ins win a name clash)."""
    return {**plugin_strategies(), **builtin_strategies()}


def resolve_strategy(name: str) -> type[Strategy]:
    builtins = builtin_strategies()
    if name in builtins:
        return builtins[name]
    if "." in name or ":" in name:
        return _import_dotted(name)
    plugins = plugin_strategies()
    if name in plugins:
        return plugins[name]
    known = ", ".join(sorted({**plugins, **builtins}))
    raise ConfigError(f"strategy.name: unknown strategy {name!r}; known: {known} "
                      f"(or a dotted path such as mypkg.module:MyStrategy)")


def _import_dotted(path: str) -> type[Strategy]:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"strategy.name: cannot import {path!r} ({err})") from None
    _check_class(cls, path)
    return cls


def _check_class(cls: object, where: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"strategy.name: {where} is not a lifelong Strategy subclass")
