"""Tiny random-weight Hugging Face models of each supported architecture (hidden 64, 2 blocks).

Shared by the pruning plumbing tests (``test_sequential``, ``test_prune_api``, ``test_atomic``).
"""
from __future__ import annotations

import pytest
import torch

VOCAB = 256
MAX_POS = 128

#: architecture -> (config class name, model class name, config keyword arguments)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=MAX_POS)),
    # a sliding window shorter than the calibration windows, so the mask matters
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=MAX_POS,
        sliding_window=8)),
    # layer 0 full attention, layer 1 sliding window: the blocks get different masks
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=MAX_POS,
        use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, rotary_pct=0.5)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        n_embd=64, n_inner=128, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=MAX_POS,
        bos_token_id=0, eos_token_id=0)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, word_embed_proj_dim=64)),
    "bert": ("BertConfig", "BertModel", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, max_position_embeddings=MAX_POS)),
}


def build(arch: str, *, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random model of ``arch`` in eval mode (weights seeded)."""
    import transformers

    config_name, model_name, kwargs = ARCHS[arch]
    config = getattr(transformers, config_name)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    return model.eval()


def token_windows(n: int = 4, seqlen: int = 32, *, seed: int = 0) -> torch.Tensor:
    """Random token ids of shape (n, seqlen)."""
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def model_output(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits (causal LMs) or last hidden states (encoders) for a batch of token ids."""
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture(scope="module", autouse=False)
def one_torch_thread():
    """Run a module's tests on one intra-op thread (restored afterwards).

    The test machines share two cores between several processes; torch's default of one thread
    per core then spins against the other processes and tiny matrix products take 100x longer.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
