"""Calibration windows: the Wanda/SparseGPT sampling protocol, seeded, with clear errors."""
from __future__ import annotations

import pytest
import torch

from specmetrics import ParameterError
from specmetrics.calibration import CalibrationSet, load_calibration


def char_tokenizer(text):
    """Token id = byte value: the stream is the text itself."""
    return list(text.encode("utf-8"))


def _stream(text):
    return torch.tensor(char_tokenizer(text), dtype=torch.long)


TEXTS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen jugs",
         "sphinx of black quartz, judge my vow"]


def test_texts_are_joined_and_windows_drawn_with_a_seeded_generator():
    calib = load_calibration(TEXTS, tokenizer=char_tokenizer, nsamples=5, seqlen=10, seed=3)
    stream = _stream("\n\n".join(TEXTS))
    starts = torch.randint(0, len(stream) - 10, (5,),
                           generator=torch.Generator().manual_seed(3))
    expected = torch.stack([stream[s:s + 10] for s in starts])
    assert torch.equal(calib.input_ids, expected)
    assert calib.input_ids.dtype == torch.long
    assert (calib.nsamples, calib.seqlen, calib.seed) == (5, 10, 3)
    assert calib.source == "texts" and calib.n_tokens == len(stream)


def test_same_seed_same_windows_other_seed_other_windows():
    a = load_calibration(TEXTS, tokenizer=char_tokenizer, nsamples=6, seqlen=8, seed=0)
    b = load_calibration(TEXTS, tokenizer=char_tokenizer, nsamples=6, seqlen=8, seed=0)
    c = load_calibration(TEXTS, tokenizer=char_tokenizer, nsamples=6, seqlen=8, seed=1)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_every_window_is_a_slice_of_the_stream_and_the_last_token_can_follow():
    stream = _stream("\n\n".join(TEXTS))
    calib = load_calibration(TEXTS, tokenizer=char_tokenizer, nsamples=64, seqlen=20, seed=0)
    text = bytes(stream.tolist())
    for row in calib.input_ids:
        start = text.find(bytes(row.tolist()))
        assert 0 <= start <= len(stream) - 21  # a next token exists after every window


def test_text_of_exactly_seqlen_plus_one_tokens():
    calib = load_calibration(["abcdefghijk"], tokenizer=char_tokenizer, nsamples=3, seqlen=10)
    assert torch.equal(calib.input_ids, _stream("abcdefghij").expand(3, 10))


def test_text_shorter_than_seqlen_plus_one():
    with pytest.raises(ParameterError, match=r"seqlen \+ 1 = 11 tokens.*Got '10 tokens'"):
        load_calibration(["abcdefghij"], tokenizer=char_tokenizer, nsamples=1, seqlen=10)


def test_text_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(TEXTS), encoding="utf-8")
    from_file = load_calibration(path, tokenizer=char_tokenizer, nsamples=4, seqlen=12, seed=2)
    from_list = load_calibration(TEXTS, tokenizer=char_tokenizer, nsamples=4, seqlen=12, seed=2)
    assert torch.equal(from_file.input_ids, from_list.input_ids)
    assert from_file.source == f"file:{path}"
    # the one text rule: a str is text; a str naming a file is still read, with a warning
    with pytest.warns(DeprecationWarning, match="pathlib.Path"):
        old = load_calibration(str(path), tokenizer=char_tokenizer, nsamples=4, seqlen=12, seed=2)
    assert old.input_ids.equal(from_list.input_ids)
    as_text = load_calibration("\n\n".join(TEXTS), tokenizer=char_tokenizer, nsamples=4,
                               seqlen=12, seed=2)
    assert as_text.input_ids.equal(from_list.input_ids) and as_text.source == "text"


def test_missing_file_or_bare_string():
    from pathlib import Path

    with pytest.raises(ParameterError, match="no such file"):
        load_calibration(Path("no/such/file.txt"), tokenizer=char_tokenizer)
    # a str is the text itself: a short one is too short, and the error says how long it is
    with pytest.raises(ParameterError, match="tokens long"):
        load_calibration("just some words", tokenizer=char_tokenizer)


def test_text_needs_a_tokenizer():
    with pytest.raises(ParameterError, match="'tokenizer' parameter"):
        load_calibration(TEXTS, nsamples=1, seqlen=4)


def test_token_windows_used_directly_and_cut():
    ids = torch.arange(60).reshape(6, 10)
    calib = load_calibration(ids, nsamples=4, seqlen=8)
    assert torch.equal(calib.input_ids, ids[:4, :8])
    assert calib.seed is None and calib.source == "token_windows"
    assert calib.input_ids.data_ptr() != ids.data_ptr()  # a copy
    same = load_calibration(ids, nsamples=6, seqlen=10)
    assert torch.equal(same.input_ids, ids)


def test_token_windows_validated():
    ids = torch.arange(40).reshape(4, 10)
    with pytest.raises(ParameterError, match="'nsamples'.*rows \\(4\\)"):
        load_calibration(ids, nsamples=5, seqlen=10)
    with pytest.raises(ParameterError, match="'seqlen'.*length \\(10\\)"):
        load_calibration(ids, nsamples=4, seqlen=11)
    with pytest.raises(ParameterError, match="integer token ids"):
        load_calibration(ids.float(), nsamples=4, seqlen=10)
    with pytest.raises(ParameterError, match="vocabulary"):
        load_calibration(ids, nsamples=4, seqlen=10, vocab_size=39)
    with pytest.raises(ParameterError, match="maximum positions"):
        load_calibration(ids, nsamples=4, seqlen=10, max_positions=8)
    with pytest.raises(ParameterError, match="shape"):
        load_calibration(ids[None], nsamples=4, seqlen=10)


def test_token_stream_sampled_like_text():
    stream = torch.arange(100)
    calib = load_calibration(stream, nsamples=5, seqlen=7, seed=4)
    starts = torch.randint(0, 93, (5,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(calib.input_ids, starts[:, None] + torch.arange(7))
    assert calib.source == "token_stream" and calib.n_tokens == 100


def test_calibration_set_round_trip():
    first = load_calibration(torch.arange(100), nsamples=3, seqlen=5)
    again = load_calibration(first, nsamples=3, seqlen=5)
    assert isinstance(again, CalibrationSet)
    assert torch.equal(again.input_ids, first.input_ids)


@pytest.mark.parametrize("kwargs", [dict(nsamples=0), dict(seqlen=0), dict(seed=-1),
                                    dict(seed=1.5), dict(nsamples=True)])
def test_bad_counts(kwargs):
    with pytest.raises(ParameterError):
        load_calibration(torch.arange(100), **{"nsamples": 2, "seqlen": 4, **kwargs})


def test_bad_kinds():
    with pytest.raises(ParameterError, match="list of texts"):
        load_calibration([1, 2, 3], tokenizer=char_tokenizer)
    with pytest.raises(ParameterError, match="list of texts"):
        load_calibration([], tokenizer=char_tokenizer)
    with pytest.raises(ParameterError, match="calibration"):
        load_calibration(3.5)


@pytest.mark.shared
def test_hf_tokenizer_adds_special_tokens_once(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = ["First paragraph of text. " * 20, "Second one, rather shorter."]
    calib = load_calibration(texts, tokenizer=tok, nsamples=4, seqlen=16, seed=0)
    stream = tok("\n\n".join(texts), return_tensors="pt").input_ids[0]
    starts = torch.randint(0, len(stream) - 16, (4,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(calib.input_ids, torch.stack([stream[s:s + 16] for s in starts]))
