"""The argparse converters both CLIs share (bgem3/_argtypes.py): values kept, bad ones named."""

from __future__ import annotations

import argparse
import doctest

import pytest

from bgem3 import _argtypes
from bgem3._argtypes import finite_float, non_negative, non_negative_seconds, port, positive, positive_seconds


@pytest.mark.parametrize("conv,text,want", [
    (positive, "3", 3), (non_negative, "0", 0), (port, "0", 0), (port, "65535", 65535),
    (finite_float, "-1.5", -1.5), (positive_seconds, "0.25", 0.25), (non_negative_seconds, "0", 0.0)])
def test_good_values(conv, text, want):
    assert conv(text) == want and type(conv(text)) is type(want)


@pytest.mark.parametrize("conv,text,msg", [
    (positive, "0", "0 must be a positive integer"), (positive, "x", "'x' is not an integer"),
    (positive, "1.5", "is not an integer"), (non_negative, "-1", "-1 must be 0 or more"),
    (port, "65536", "not a port number"), (finite_float, "nan", "finite"), (finite_float, "a", "not a number"),
    (positive_seconds, "0", "seconds > 0"), (non_negative_seconds, "-0.1", "seconds >= 0"),
    (positive_seconds, "inf", "finite")])
def test_bad_values_are_named(conv, text, msg):
    with pytest.raises(argparse.ArgumentTypeError, match=msg):
        conv(text)


def test_both_clis_use_the_shared_converters():
    from bgem3 import cli
    from bgem3.serve import cli as serve_cli

    assert cli._positive is serve_cli._positive is positive
    assert doctest.testmod(_argtypes).failed == 0
