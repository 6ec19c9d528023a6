"""perplexity(): the Wanda WikiText protocol, checked against hand computation and tiny-llama-wt."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from specmetrics import ParameterError, perplexity

SEQLEN = 8


@pytest.fixture(scope="module")
def text(vocabulary_words) -> str:
    rng = np.random.default_rng(0)
    return " ".join(rng.choice(vocabulary_words, size=8 * SEQLEN + 5))  # 8 windows + a tail


def _ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt").input_ids[0]


def _hand_ppl(model, ids: torch.Tensor, seqlen: int, n_windows: int) -> float:
    """exp(mean NLL), token by token, from log_softmax."""
    nlls = []
    with torch.no_grad():
        for w in range(n_windows):
            window = ids[w * seqlen:(w + 1) * seqlen]
            logp = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            nlls += [-float(logp[t - 1, window[t]]) for t in range(1, seqlen)]
    assert len(nlls) == n_windows * (seqlen - 1)
    return math.exp(sum(nlls) / len(nlls))


def test_equals_hand_computed_mean_nll(make_llama, word_tokenizer, text):
    model = make_llama()
    ids = _ids(word_tokenizer, text)
    n = len(ids) // SEQLEN
    assert n == 8
    expected = _hand_ppl(model, ids, SEQLEN, n)
    got = perplexity(model, word_tokenizer, text, seqlen=SEQLEN)
    assert got == pytest.approx(expected, rel=1e-6)
    # Wanda's formula: per-window mean loss x seqlen, summed, over n * seqlen
    with torch.no_grad():
        losses = [float(model(ids[w * SEQLEN:(w + 1) * SEQLEN][None],
                              labels=ids[w * SEQLEN:(w + 1) * SEQLEN][None]).loss) for w in range(n)]
    wanda = math.exp(sum(loss * SEQLEN for loss in losses) / (n * SEQLEN))
    assert got == pytest.approx(wanda, rel=1e-5)
    assert got != pytest.approx(_hand_ppl(model, ids, SEQLEN, 2), rel=1e-3)  # windows differ


def test_max_windows(make_llama, word_tokenizer, text):
    model = make_llama()
    full = perplexity(model, word_tokenizer, text, seqlen=SEQLEN)
    assert perplexity(model, word_tokenizer, text, seqlen=SEQLEN, max_windows=8) == full
    assert perplexity(model, word_tokenizer, text, seqlen=SEQLEN, max_windows=1000) == full
    first3 = perplexity(model, word_tokenizer, text, seqlen=SEQLEN, max_windows=3)
    assert first3 == pytest.approx(_hand_ppl(model, _ids(word_tokenizer, text), SEQLEN, 3), rel=1e-6)


def test_tail_is_dropped(make_llama, word_tokenizer, text):
    model = make_llama()
    ids = _ids(word_tokenizer, text)
    whole = ids[: 8 * SEQLEN]
    assert perplexity(model, None, ids, seqlen=SEQLEN) == perplexity(model, None, whole, seqlen=SEQLEN)


def test_path_str_and_token_ids_agree(make_llama, word_tokenizer, text, tmp_path):
    model = make_llama()
    file = tmp_path / "text.txt"
    file.write_text(text, encoding="utf-8")
    from_text = perplexity(model, word_tokenizer, text, seqlen=SEQLEN)
    assert perplexity(model, word_tokenizer, file, seqlen=SEQLEN) == from_text
    ids = _ids(word_tokenizer, text)
    assert perplexity(model, None, ids, seqlen=SEQLEN) == from_text
    assert perplexity(model, None, ids[None], seqlen=SEQLEN) == from_text
    # the one text rule: a str naming an existing file is read as it, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match="names an existing file"):
        assert perplexity(model, word_tokenizer, str(file), seqlen=SEQLEN) == from_text
    assert perplexity(model, word_tokenizer, [text], seqlen=SEQLEN) == from_text


def test_restores_training_mode_and_grad(make_llama, word_tokenizer, text):
    model = make_llama().train()
    perplexity(model, word_tokenizer, text, seqlen=SEQLEN, progress=False)
    assert model.training
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"seqlen": 1}, "seqlen"),
        ({"seqlen": 0}, "seqlen"),
        ({"seqlen": 8.0}, "seqlen"),
        ({"seqlen": 8, "max_windows": 0}, "max_windows"),
        ({"seqlen": 8, "progress": 1}, "progress"),
        ({"seqlen": 10_000}, "text"),
    ],
)
def test_bad_parameters(make_llama, word_tokenizer, text, kwargs, name):
    with pytest.raises(ParameterError, match=rf"^The '{name}' parameter of perplexity must be .*\. Got .* instead\.$"):
        perplexity(make_llama(), word_tokenizer, text, **kwargs)


@pytest.mark.parametrize("bad", [b"bytes", 3, "", torch.zeros(4), torch.zeros(2, 4, dtype=torch.long)])
def test_bad_text(make_llama, word_tokenizer, bad):
    with pytest.raises(ParameterError, match="The 'text' parameter of perplexity"):
        perplexity(make_llama(), word_tokenizer, bad, seqlen=SEQLEN)


def test_missing_file(make_llama, word_tokenizer, tmp_path):
    with pytest.raises(ParameterError, match="no such file"):
        perplexity(make_llama(), word_tokenizer, tmp_path / "nope.txt", seqlen=SEQLEN)


# --- tiny-llama-wt (../shared) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama_wt(tiny_llama_dir):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    return model, tokenizer


@pytest.mark.shared
def test_tiny_llama_wt_matches_hf_loss(tiny_llama_wt, shared_dir):
    """Two 64-token windows of real text through the real tokenizer (no BOS): HF's own loss."""
    model, tokenizer = tiny_llama_wt
    path = shared_dir / "data" / "wikitext-2-tokenized" / "test.txt"
    text = path.read_text(encoding="utf-8")[:2000]
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    assert ids[0] != tokenizer.bos_token_id  # this tokenizer adds no BOS by default
    n = 64
    with torch.no_grad():
        losses = [float(model(ids[w * n:(w + 1) * n][None], labels=ids[w * n:(w + 1) * n][None]).loss)
                  for w in range(2)]
    got = perplexity(model, tokenizer, text, seqlen=n, max_windows=2)
    assert got == pytest.approx(math.exp(sum(losses) / 2), rel=1e-5)


@pytest.mark.shared
@pytest.mark.slow
def test_tiny_llama_wt_tokenized_wikitext(tiny_llama_wt, shared_dir):
    """shared/README: 60.6 on the tokenized test split, 256-token windows, no BOS, first 24.

    Measured here: 60.638.
    """
    model, tokenizer = tiny_llama_wt
    path = shared_dir / "data" / "wikitext-2-tokenized" / "test.txt"
    ppl = perplexity(model, tokenizer, Path(path), seqlen=256, max_windows=24)
    assert abs(ppl - 60.64) < 0.5, ppl


@pytest.mark.shared
@pytest.mark.slow
def test_tiny_llama_wt_raw_wikitext(tiny_llama_wt, shared_dir):
    """shared/README: 185 on the raw test split (``wiki.test.raw``), first 64 windows.

    Measured here: 185.3797 (training_summary.json: 185.37971).
    """
    model, tokenizer = tiny_llama_wt
    path = shared_dir / "data" / "wikitext-2-raw" / "wiki.test.raw"
    ppl = perplexity(model, tokenizer, Path(path), seqlen=256, max_windows=64)
    assert abs(ppl - 185.38) < 0.5, ppl
