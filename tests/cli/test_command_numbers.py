"""Numbers given to the local commands are checked as they are parsed, before anything starts."""

from __future__ import annotations

import argparse

import pytest

from controller.cli.main import _parser, main

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--rps", "0"], "argument --rps: '0' is not a number above 0"),
    (["demo", "--interval", "-3"], "argument --interval: '-3' is not a number above 0"),
    (["demo", "--max-seconds", "soon"], "argument --max-seconds: 'soon' is not a number above 0"),
    (["run", "-f", "r.yaml", "--max-seconds", "nan"], "argument --max-seconds: 'nan' is not a number above 0"),
    (["run", "-f", "r.yaml", "--rps", "-1"], "argument --rps: '-1' is not a number of 0 or more"),
    (["stack", "up", "--weight", "150"], "argument --weight: '150' is not a whole number from 0 to 100"),
    (["stack", "up", "--weight", "12.5"], "argument --weight: '12.5' is not a whole number from 0 to 100"),
])
def test_a_number_out_of_range_is_refused_naming_its_flag(argv: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_every_flag_of_the_local_commands_says_what_it_does() -> None:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    stack = next(a for a in sub.choices["stack"]._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in (("demo", sub.choices["demo"]), ("run", sub.choices["run"]), ("stack up", stack.choices["up"])):
        silent = [a.option_strings[-1] for a in parser._actions if a.option_strings and not a.help]
        assert silent == [], f"canary {name}: flags without help: {silent}"
