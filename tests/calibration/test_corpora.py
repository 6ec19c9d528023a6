"""The corpus shipped in specmetrics/data/ loads through importlib.resources."""
from __future__ import annotations

import pytest

from specmetrics import ParameterError, load_text
from specmetrics.calibration import CORPORA, load_paragraphs


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_load_text(name):
    text = load_text(name)
    assert 15_000 < len(text.encode("utf-8")) < 300_000
    assert "\r" not in text and text.isascii()
    assert len(load_paragraphs(name)) >= 30


def test_calibration_and_evaluation_are_disjoint():
    calibration = set(load_paragraphs("calibration"))
    evaluation = set(load_paragraphs("evaluation"))
    assert not calibration & evaluation
    assert len(calibration) == len(load_paragraphs("calibration"))  # no repeated paragraph


def test_unknown_name():
    with pytest.raises(ParameterError, match=r"^The 'name' parameter of load_text must be one of 'calibration', 'evaluation'\. Got 'train' instead\.$"):
        load_text("train")
