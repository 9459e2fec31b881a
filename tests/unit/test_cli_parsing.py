"""`lifelong run` and `lifelong submit` take flags and key=value overrides in any order."""

from __future__ import annotations

import pytest

from lifelong.platform.cli import _parser, parse


def _parse(*argv: str):
    return parse(_parser(), list(argv))


@pytest.mark.parametrize("argv", [
    ("run", "c.yaml", "--no-progress", "a=1", "b=2"),
    ("run", "c.yaml", "a=1", "b=2", "--no-progress"),
    ("run", "c.yaml", "a=1", "--no-progress", "b=2"),
    ("run", "--no-progress", "c.yaml", "a=1", "b=2"),
])
def test_run_takes_flags_anywhere(argv):
    args = _parse(*argv)
    assert args.command == "run" and args.no_progress and args.resume is None
    assert args.args == ["c.yaml", "a=1", "b=2"]


def test_run_resume_takes_overrides_on_either_side():
    for argv in (("run", "--resume", "abc", "engine.workers=1", "--no-progress"),
                 ("run", "engine.workers=1", "--no-progress", "--resume", "abc")):
        args = _parse(*argv)
        assert args.resume == "abc" and args.args == ["engine.workers=1"] and args.no_progress


@pytest.mark.parametrize("argv", [
    ("submit", "c.yaml", "--no-follow", "a=1", "--address", "http://h:8265", "b=2"),
    ("submit", "c.yaml", "a=1", "b=2", "--no-follow", "--address", "http://h:8265"),
    ("submit", "--address", "http://h:8265", "--no-follow", "c.yaml", "a=1", "b=2"),
])
def test_submit_takes_flags_anywhere(argv):
    args = _parse(*argv)
    assert args.command == "submit" and args.no_follow and args.address == "http://h:8265"
    assert args.config == "c.yaml" and args.overrides == ["a=1", "b=2"]


def test_an_unknown_flag_is_still_refused(capsys):
    with pytest.raises(SystemExit) as info:
        _parse("run", "c.yaml", "--no-such-flag", "a=1")
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_other_commands_parse_as_before():
    args = _parse("ui", "abc", "--port", "5001")
    assert (args.command, args.run_id, args.port, args.host) == ("ui", "abc", 5001, "127.0.0.1")
    assert _parse("data", "fetch", "mnist").names == ["mnist"]
