"""The small English corpus shipped in ``specmetrics/data/`` (no downloads at run time).

Two disjoint texts of plain prose written for this project (science, history, everyday life,
technology, nature; CC0 / public domain): ``"calibration"`` for pruning statistics and
``"evaluation"`` for held-out perplexity. Paragraphs are separated by one blank line.
"""
from __future__ import annotations

from importlib import resources

from .._validation import check_choice

__all__ = ["CORPORA", "load_text", "load_paragraphs"]

#: Names of the shipped texts, and their files in ``specmetrics/data/``.
CORPORA = {"calibration": "calibration.txt", "evaluation": "evaluation.txt"}


def load_text(name: str) -> str:
    """One of the texts shipped with specmetrics.

    Parameters
    ----------
    name : {"calibration", "evaluation"}
        ``"calibration"``: text for collecting pruning statistics (Wanda, SparseGPT);
        ``"evaluation"``: disjoint held-out text for :func:`~specmetrics.perplexity`.

    Returns
    -------
    str
        The whole text (UTF-8, LF line endings, paragraphs separated by ``"\\n\\n"``).

    Examples
    --------
    >>> from specmetrics.evaluation import load_text
    >>> text = load_text("evaluation")
    >>> len(text) > 10_000
    True
    """
    check_choice(name, tuple(CORPORA), name="name", func="load_text")
    resource = resources.files("specmetrics").joinpath("data", CORPORA[name])
    return resource.read_text(encoding="utf-8")


def load_paragraphs(name: str) -> list[str]:
    """The paragraphs of :func:`load_text` ``(name)``, stripped, in order (e.g. as sentence
    encoder inputs)."""
    return [p.strip() for p in load_text(name).split("\n\n") if p.strip()]
