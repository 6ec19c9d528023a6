"""Tiny models and tokenizers for the evaluation tests, built in memory (nothing is downloaded).

Fixtures
    ``word_tokenizer``: a whitespace word-level Hugging Face fast tokenizer (no BOS added).
    ``make_llama(seed=0)``: a 2-layer random ``LlamaForCausalLM`` (hidden 32) over its vocabulary.
    ``make_bert(seed=0)``: a 2-layer random ``BertModel`` (hidden 32) over its vocabulary.
    ``toy_mc_path``: ``data/toy_mc.jsonl``, a 10-question multiple-choice task.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"
TOY_MC = DATA / "toy_mc.jsonl"

_SPECIALS = ["[UNK]", "[PAD]", "<s>", "</s>"]
_FILLER = "a an and of to in on with it was this that for as by at from".split()


def _words() -> list[str]:
    words = set(_FILLER)
    for line in TOY_MC.read_text().splitlines():
        row = json.loads(line)
        words.update(row["question"].split())
        words.update(row["choices"])
    return sorted(words)


@pytest.fixture(scope="session")
def word_tokenizer():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS + _words())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
        eos_token="</s>", model_max_length=4096,
    )


@pytest.fixture(scope="session")
def make_llama(word_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 0, context: int = 64):
        config = LlamaConfig(
            vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=context, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():  # sharper outputs than the default init: NLLs differ across windows
            model.lm_head.weight.mul_(20.0)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def make_bert(word_tokenizer):
    from transformers import BertConfig, BertModel

    def make(seed: int = 0):
        config = BertConfig(
            vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
            pad_token_id=1,
        )
        torch.manual_seed(seed)
        return BertModel(config).eval()

    return make


@pytest.fixture(scope="session")
def vocabulary_words() -> list[str]:
    return _words()


@pytest.fixture(scope="session")
def toy_mc_path() -> Path:
    return TOY_MC
