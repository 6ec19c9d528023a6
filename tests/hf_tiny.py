"""Tiny random Hugging Face models with a real tokenizer, built in memory or saved to a folder.

Shared by ``test_pipeline.py`` and the ``prune`` tests of ``test_cli.py``. The tokenizer is a
whitespace/punctuation word-level ``PreTrainedTokenizerFast`` whose vocabulary is every word of
the shipped corpus (``specmetrics/data``), so calibration and evaluation texts have no unknown
words; nothing is downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from specmetrics.evaluation import load_text

SPECIALS = ["[UNK]", "[PAD]", "[CLS]", "[SEP]"]
MAX_POS = 128


def corpus_tokenizer(max_length: int = MAX_POS):
    """A word-level fast tokenizer over the words of the shipped corpus (adds no special
    tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set()
    for name in ("calibration", "evaluation"):
        words.update(re.findall(r"\w+|[^\w\s]", load_text(name)))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]",
                                   model_max_length=max_length)


def tiny_llama(vocab_size: int, *, seed: int = 0):
    """A 2-block random ``LlamaForCausalLM`` (hidden 64) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=MAX_POS, pad_token_id=1, bos_token_id=2,
                         eos_token_id=3)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_bert(vocab_size: int, *, seed: int = 0):
    """A 2-block random ``BertModel`` (hidden 64) in eval mode."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=MAX_POS, pad_token_id=1)
    torch.manual_seed(seed)
    return BertModel(config).eval()


def save_tiny(folder: Path, arch: str, *, seed: int = 0) -> Path:
    """Save a tiny ``arch`` ("llama" or "bert") model and its tokenizer to ``folder``."""
    tokenizer = corpus_tokenizer()
    model = (tiny_llama if arch == "llama" else tiny_bert)(len(tokenizer), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
