"""A strategy by dotted path resolves in the working directory first (as ``python -m``
does), then in the installed packages; by file path relative to it or absolute. Errors
are one ConfigError line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from lifelong.platform.errors import ConfigError
from lifelong.strategies.registry import local_source, resolve_strategy

STRATEGY = '''
from dataclasses import dataclass

from lifelong.platform.config import StrategyConfig
from lifelong.strategies.base import Strategy


@dataclass
class MineConfig(StrategyConfig):
    level: int = 1


class Mine(Strategy):
    name = "mine"
    description = "a user's strategy"
    Config = MineConfig
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Iterator[Path]:
    """An empty working directory; the modules a test imports from it are forgotten after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _package(root: Path, name: str) -> Path:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "mine.py").write_text(STRATEGY)
    return root / name


def test_the_working_directory_wins_over_an_installed_package_of_the_same_name(user_dir):
    """avalanche-lib installs a top-level ``examples``: the user's ``examples/`` must win."""
    import examples  # the installed one, imported first, as any library could have

    assert not Path(examples.__file__).is_relative_to(user_dir)
    package = _package(user_dir, "examples")
    cls = resolve_strategy("examples.mine:Mine")
    assert cls.__name__ == "Mine" and Path(sys.modules[cls.__module__].__file__).is_relative_to(package)
    assert resolve_strategy("examples.mine.Mine") is cls
    assert local_source("examples.mine:Mine") == package


def test_a_dotted_path_not_in_the_working_directory_comes_from_the_installed_packages(user_dir):
    cls = resolve_strategy("lifelong.strategies.ewc:EWC")
    assert cls.__module__ == "lifelong.strategies.ewc"
    assert local_source("lifelong.strategies.ewc:EWC") is None  # installed: nothing to ship
    assert local_source("ewc") is None


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_a_file_path_loads_that_file(user_dir, form):
    (user_dir / "plugins").mkdir()
    file = user_dir / "plugins" / "my_strategy.py"
    file.write_text(STRATEGY)
    path = "plugins/my_strategy.py" if form == "relative" else str(file)
    cls = resolve_strategy(f"{path}:Mine")
    assert cls.__name__ == "Mine" and sys.modules[cls.__module__].__file__ == str(file)
    assert local_source(f"{path}:Mine") == file


def test_the_repository_example_resolves_from_the_repository_root(monkeypatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    cls = resolve_strategy("strategy_examples.clip_strategy:ClipGrads")
    assert cls.name == "clip"
    assert local_source("strategy_examples.clip_strategy:ClipGrads") == root / "strategy_examples"
    assert resolve_strategy("strategy_examples/clip_strategy.py:ClipGrads").name == "clip"


@pytest.mark.parametrize("name, says", [
    ("no_such_pkg.mod:Mine", "cannot import 'no_such_pkg.mod:Mine' (No module named 'no_such_pkg')"),
    ("pkg.mine:Missing", "has no attribute 'Missing'"),
    ("missing/my_strategy.py:Mine", "no file "),
    ("plugin.py:Missing", "has no attribute 'Missing'"),
    ("plugin.py", "a file path reads path/to/file.py:ClassName"),
    ("plugin.py:helper", "is not a lifelong Strategy subclass"),
])
def test_what_cannot_be_loaded_is_one_config_error_line(user_dir, name, says):
    _package(user_dir, "pkg")
    (user_dir / "plugin.py").write_text(STRATEGY + "\n\ndef helper():\n    pass\n")
    with pytest.raises(ConfigError) as info:
        resolve_strategy(name)
    message = str(info.value)
    assert message.startswith("strategy.name: ") and says in message and "\n" not in message


def test_a_worker_without_the_file_loads_the_copy_ray_shipped(user_dir, tmp_path_factory):
    """In a Ray worker the path may not exist (its own working directory); the copy Ray
    unpacked from py_modules is used, even where another directory on sys.path (Ray puts
    the driver's there on a local cluster) has a file of that name."""
    shipped = tmp_path_factory.mktemp("session") / "runtime_resources" / "py_modules_files" / "_ray_pkg_1"
    shipped.mkdir(parents=True)
    (shipped / "my_strategy.py").write_text(STRATEGY)
    elsewhere = tmp_path_factory.mktemp("driver_cwd")
    (elsewhere / "my_strategy.py").write_text(STRATEGY)
    sys.path[:0] = [str(elsewhere), str(shipped)]
    cls = resolve_strategy("plugins/my_strategy.py:Mine")
    assert sys.modules[cls.__module__].__file__ == str(shipped / "my_strategy.py")
