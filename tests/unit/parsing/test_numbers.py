"""Numbers read from text are ASCII digits only: str.isdigit() is also true for superscripts ("²", which int()
then refuses with a traceback) and int() also reads other scripts' digits ("٣" is 3), full-width digits,
signs, spaces and underscores ("1_000")."""

import argparse

import pytest

from agent.cli.relabel_cmd import _gid, _positive_int
from agent.config import split_address
from agent.errors import InvalidInput

NOT_ASCII_DIGITS = ["\u00b2", "\u0663", "\uff11", " 1", "+1", "1_000", "1\n", ""]


@pytest.mark.parametrize("port", NOT_ASCII_DIGITS + ["9" * 5000, "65536"])
def test_metrics_address_port(port):
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        split_address(f"127.0.0.1:{port}")


def test_metrics_address_port_ok():
    assert split_address("[::1]:9100") == ("::1", 9100) and split_address(":0") == ("0.0.0.0", 0)


@pytest.mark.parametrize("text", NOT_ASCII_DIGITS + ["9" * 5000])
def test_relabel_numbers(text):
    for parse in (_gid, _positive_int):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert _gid("0") == 0 and _gid("4294967294") == 4294967294 and _positive_int("8") == 8
