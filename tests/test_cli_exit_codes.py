"""cli.py's exit-code table and its one wrapper around every command (pure logic)."""

import argparse
import os

import pika.exceptions
import pytest

from wqd import config, errors
from wqd.broker import amqp
from wqd.cli import main as cli


class Surprise(Exception):
    """An error no module of wqd raises on purpose: a bug, shown with its traceback."""


@pytest.mark.parametrize("error, code", [
    (errors.ConfigError("pools[0].workers: expected a positive integer"), 78),
    (config.ConfigError("wqd.yaml: invalid YAML"), 78),
    (errors.BrokerUnavailable("the broker refused message 'x' (nack, 9 times)"), 69),
    (amqp.BrokerUnavailable([("amqp://u:p@nowhere/", ConnectionRefusedError(111, "Connection refused"))]), 69),
    (errors.WqdError("--queue is required with --url"), 1),
    (errors.InputError("stdin line 2 is not UTF-8 text"), 65),
    (type("QueueMismatch", (errors.ConfigError,), {})("a subclass"), 78),
])
def test_each_error_class_has_its_exit_code(error, code):
    assert cli.exit_code(error) == code


def test_the_codes_are_the_sysexits_ones():
    assert (os.EX_CONFIG, os.EX_UNAVAILABLE, os.EX_DATAERR) == (78, 69, 65)
    assert dict(cli.EXIT_CODES) == {errors.ConfigError: os.EX_CONFIG, errors.BrokerUnavailable: os.EX_UNAVAILABLE,
                                    errors.InputError: os.EX_DATAERR}


def test_config_and_broker_errors_are_the_typed_ones():
    assert config.ConfigError is errors.ConfigError
    assert issubclass(amqp.BrokerUnavailable, errors.BrokerUnavailable)


def _command(name, outcome):
    def func(args):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return argparse.Namespace(command=name, func=func)


def test_a_configuration_error_is_one_paragraph_under_one_heading(capsys):
    error = errors.ConfigError("wqd.yaml:7: pools[0].workers: expected a positive integer, got 'two'\n"
                               "wqd.yaml:8: pools[0].colour: unknown key")
    assert cli.run_command(_command("run", error)) == 78
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("wqd: configuration error:\n"
                            "wqd.yaml:7: pools[0].workers: expected a positive integer, got 'two'\n"
                            "wqd.yaml:8: pools[0].colour: unknown key\n")


@pytest.mark.parametrize("error, code", [
    (errors.BrokerUnavailable("cannot reach the broker at amqp://guest:***@localhost:5672/%2F"), 69),
    (errors.WqdError("--header expects K=V, got 'x'"), 1),
])
def test_other_failures_are_one_line_naming_the_command(capsys, error, code):
    assert cli.run_command(_command("status", error)) == code
    assert capsys.readouterr().err == f"wqd status: {error}\n"


def test_a_command_that_succeeds_keeps_its_code_and_prints_nothing_more(capsys):
    assert cli.run_command(_command("check", 0)) == 0
    assert capsys.readouterr().err == ""


def test_an_unexpected_error_is_not_hidden():
    """A bug keeps its traceback (Python exits 1 with it), rather than a tidy line."""
    with pytest.raises(Surprise):
        cli.run_command(_command("run", Surprise("bug")))
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        cli.run_command(_command("publish", pika.exceptions.ChannelWrongStateError()))


def test_main_exits_with_the_commands_code(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", "-c", str(tmp_path / "absent.yaml")])
    assert exited.value.code == 78
    assert "cannot read the configuration file: No such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["publish", "--url", "http://nowhere/", "--queue", "q", "x"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "wqd publish: --url: expected an amqp:// or amqps:// URL or a list of them\n"
