"""Strategy names -> classes: built-ins, the ``lifelong.strategies`` entry point group,
a dotted path (``mypkg.module:MyStrategy`` or ``mypkg.module.MyStrategy``) or a file
(``path/to/my_strategy.py:MyStrategy``).

A dotted path is looked up in the working directory first, as ``python -m`` does, then in
the installed packages: a user's ``mypkg/`` beside their configs wins over an installed
package of the same name. ``local_source`` names what the driver ships to Ray workers."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Optional

from lifelong.platform.errors import ConfigError
from lifelong.strategies.base import Strategy

ENTRY_POINT_GROUP = "lifelong.strategies"
RAY_SHIPPED_DIR = "py_modules_files"  # where Ray unpacks runtime_env py_modules on a node


def builtin_strategies() -> dict[str, type[Strategy]]:
    from lifelong.strategies.cbp import ContinualBackprop
    from lifelong.strategies.ewc import EWC
    from lifelong.strategies.gateon import GateON
    from lifelong.strategies.joint import Joint
    from lifelong.strategies.hnet import Hnet
    from lifelong.strategies.l2 import L2
    from lifelong.strategies.moe import MoE
    from lifelong.strategies.naive import Naive
    from lifelong.strategies.redo import ReDo
    from lifelong.strategies.replay import Replay
    from lifelong.strategies.shrink_perturb import ShrinkPerturb

    return {cls.name: cls for cls in (Naive, Joint, Replay, EWC, ContinualBackprop, ReDo, L2,
                                      ShrinkPerturb, GateON, MoE, Hnet)}


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
    if _is_file_path(name):
        return _import_file(name)
    if "." in name or ":" in name:
        return _import_dotted(name)
    plugins = plugin_strategies()
    if name in plugins:
        return plugins[name]
    known = ", ".join(sorted({**plugins, **builtins}))
    raise ConfigError(f"strategy.name: unknown strategy {name!r}; known: {known} "
                      f"(or a dotted path such as mypkg.module:MyStrategy, or a file: "
                      f"path/to/my_strategy.py:MyStrategy)")


def local_source(name: str) -> Optional[Path]:
    """The file or package directory a strategy name loads from the user's own files (the
    working directory, or a file path), which Ray workers elsewhere do not have; None for
    built-ins, entry points and installed packages."""
    if _is_file_path(name):
        file = _file_of(name)
        return file if file.is_file() else None
    if name in builtin_strategies() or not ("." in name or ":" in name):
        return None
    top = _split(name)[0].partition(".")[0]
    if top == "lifelong":  # the platform itself: installed wherever a worker runs
        return None
    return _in_cwd(top)


def _split(path: str) -> tuple[str, str]:
    module, _, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    return module, attr


def _is_file_path(name: str) -> bool:
    module = _split(name)[0] if ":" in name else name
    return module.endswith(".py") or "/" in module or "\\" in module


def _file_of(name: str) -> Path:
    return (Path.cwd() / _split(name)[0]).resolve()


def _in_cwd(top: str) -> Optional[Path]:
    """``top`` as a package or module in the working directory, if it is one there."""
    cwd = Path.cwd()
    if (cwd / top / "__init__.py").is_file():
        return cwd / top
    if (cwd / f"{top}.py").is_file():
        return cwd / f"{top}.py"
    return None


def _import_dotted(path: str) -> type[Strategy]:
    module_name, attr = _split(path)
    try:
        cls = getattr(_import_cwd_first(module_name), attr)
    except (ImportError, AttributeError, SyntaxError) as err:
        raise ConfigError(f"strategy.name: cannot import {path!r} ({err})") from None
    _check_class(cls, path)
    return cls


def _import_cwd_first(module_name: str) -> ModuleType:
    """Import as ``python -m`` would from here: the working directory ahead of site-packages.
    A same-named module already imported from elsewhere is dropped first."""
    top = module_name.partition(".")[0]
    local = _in_cwd(top)
    if local is not None:
        cwd = str(local.parent)
        if sys.path[:1] != [cwd]:
            sys.path.insert(0, cwd)
        loaded = sys.modules.get(top)
        if loaded is not None and not _loaded_from(loaded, local):
            for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                del sys.modules[key]
        importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _loaded_from(module: ModuleType, source: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve().is_relative_to(source.resolve())


def _import_file(name: str) -> type[Strategy]:
    """``path/to/my_strategy.py:MyStrategy``, relative to the working directory or absolute.
    Imported as module ``my_strategy`` with its directory on sys.path (as ``python FILE``
    does). In a Ray worker where the path does not exist (another machine, another working
    directory) the copy the driver shipped (runtime_env py_modules) is used."""
    file, attr = _file_of(name), _split(name)[1]
    if not attr or not file.name.endswith(".py"):
        raise ConfigError(f"strategy.name: {name!r}: a file path reads path/to/file.py:ClassName")
    source = file if file.is_file() else _shipped(file.name)
    if source is None:
        raise ConfigError(f"strategy.name: cannot import {name!r} (no file {file})")
    try:
        cls = getattr(_load_file(file.stem, source), attr)
    except (ImportError, AttributeError, SyntaxError) as err:
        raise ConfigError(f"strategy.name: cannot import {name!r} ({err})") from None
    _check_class(cls, name)
    return cls


def _shipped(file_name: str) -> Optional[Path]:
    """The copy of ``file_name`` Ray unpacked from a runtime_env's py_modules, if any."""
    for entry in map(Path, sys.path):
        if RAY_SHIPPED_DIR in entry.parts and (entry / file_name).is_file():
            return entry / file_name
    return None


def _load_file(module_name: str, file: Path) -> ModuleType:
    loaded = sys.modules.get(module_name)
    if loaded is not None and _loaded_from(loaded, file):
        return loaded
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _check_class(cls: object, where: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"strategy.name: {where} is not a lifelong Strategy subclass")
