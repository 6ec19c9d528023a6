"""embedding_fidelity(): cosine and nearest-neighbour agreement between dense and pruned encoders."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from specmetrics import FidelityResult, ParameterError, embedding_fidelity
from specmetrics.evaluation import load_paragraphs, sentence_embeddings


@pytest.fixture(scope="module")
def texts(vocabulary_words) -> list[str]:
    rng = np.random.default_rng(1)
    # different lengths, so batches are padded
    return [" ".join(rng.choice(vocabulary_words, size=int(n))) for n in rng.integers(3, 15, size=12)]


def _perturbed(model, scale: float, seed: int = 0):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            if p.dim() == 2:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=gen))
    return other


def test_identical_models(make_bert, word_tokenizer, texts):
    model = make_bert()
    result = embedding_fidelity(model, copy.deepcopy(model), word_tokenizer, texts, k=3)
    assert isinstance(result, FidelityResult)
    assert result.cosine == pytest.approx(1.0, abs=1e-6)
    assert result.cosine_min == pytest.approx(1.0, abs=1e-6)
    assert result.nn_agreement == 1.0
    assert result.n_texts == len(texts) and result.k == 3 and result.pooling == "mean"
    frame = result.to_frame()
    assert list(frame.columns) == ["cosine", "nn_overlap"] and len(frame) == len(texts)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.cosine = 0.5
    assert not result.per_text_cosine.flags.writeable


def test_perturbation_lowers_fidelity(make_bert, word_tokenizer, texts):
    model = make_bert()
    small = embedding_fidelity(model, _perturbed(model, 0.05), word_tokenizer, texts, k=3)
    large = embedding_fidelity(model, _perturbed(model, 2.0), word_tokenizer, texts, k=3)
    assert small.cosine < 1.0 - 1e-6
    assert large.cosine < small.cosine
    assert large.nn_agreement < 1.0
    assert 0.0 <= large.nn_agreement <= small.nn_agreement <= 1.0


def test_unrelated_model_has_low_agreement(make_bert, word_tokenizer, texts):
    result = embedding_fidelity(make_bert(seed=0), make_bert(seed=1), word_tokenizer, texts, k=3)
    assert result.cosine < 0.9


def test_padding_invariance_and_mean_pooling(make_bert, word_tokenizer, texts):
    """Batched (padded) and one-by-one embeddings agree: padding is masked out of the mean."""
    model = make_bert()
    batched = sentence_embeddings(model, word_tokenizer, texts, batch_size=5)
    single = sentence_embeddings(model, word_tokenizer, texts, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert batched.shape == (len(texts), 32)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(len(texts)))
    # hand-computed mean pooling of the first text
    enc = word_tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    manual = torch.nn.functional.normalize(hidden.mean(0), dim=0)
    torch.testing.assert_close(batched[0], manual, atol=1e-5, rtol=1e-5)


def test_cls_pooling(make_bert, word_tokenizer, texts):
    model = make_bert()
    result = embedding_fidelity(model, _perturbed(model, 0.5), word_tokenizer, texts, pooling="cls", k=2)
    assert result.pooling == "cls" and 0.0 <= result.nn_agreement <= 1.0


def test_models_keep_their_mode(make_bert, word_tokenizer, texts):
    dense, pruned = make_bert().train(), make_bert().eval()
    embedding_fidelity(dense, pruned, word_tokenizer, texts, k=1)
    assert dense.training and not pruned.training


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"k": 0}, "k"),
        ({"k": 12}, "k"),
        ({"k": 2.0}, "k"),
        ({"pooling": "max"}, "pooling"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_parameters(make_bert, word_tokenizer, texts, kwargs, name):
    model = make_bert()
    with pytest.raises(ParameterError, match=rf"^The '{name}' parameter of embedding_fidelity must be .*\. Got .* instead\.$"):
        embedding_fidelity(model, model, word_tokenizer, texts, **kwargs)


@pytest.mark.parametrize("bad", ["one string", [], [1, 2]])
def test_bad_texts(make_bert, word_tokenizer, bad):
    model = make_bert()
    with pytest.raises(ParameterError, match="The 'texts' parameter of embedding_fidelity"):
        embedding_fidelity(model, model, word_tokenizer, bad)


# --- the real all-MiniLM-L6-v2 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return (transformers.AutoModel.from_pretrained(minilm_dir).eval(),
            transformers.AutoTokenizer.from_pretrained(minilm_dir))


def _magnitude_prune(model, sparsity: float):
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for module in pruned.encoder.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                k = int(w.numel() * sparsity)
                threshold = w.abs().flatten().kthvalue(k).values
                w.masked_fill_(w.abs() <= threshold, 0.0)
    return pruned


def test_minilm_magnitude_pruning_lowers_cosine(minilm):
    model, tokenizer = minilm
    # the first sentence of eight paragraphs: short inputs keep the test fast
    texts = [p.split(". ")[0] + "." for p in load_paragraphs("evaluation")[:8]]
    pruned = _magnitude_prune(model, 0.5)
    zeros = [float((m.weight == 0).float().mean()) for m in pruned.encoder.modules()
             if isinstance(m, torch.nn.Linear)]
    assert min(zeros) >= 0.5
    result = embedding_fidelity(model, pruned, tokenizer, texts, k=3)
    assert 0.0 < result.cosine < 0.999
    assert 0.0 <= result.nn_agreement <= 1.0


def test_minilm_matches_sentence_transformers(minilm, minilm_dir):
    """Our mean pooling + L2 normalisation reproduces sentence-transformers' encode()."""
    st = pytest.importorskip("sentence_transformers")
    model, tokenizer = minilm
    texts = [load_paragraphs("calibration")[0], "A short sentence.", "Another, shorter one."]
    ours = sentence_embeddings(model, tokenizer, texts, max_length=256)
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=False)
    cos = torch.nn.functional.cosine_similarity(ours, reference.float().cpu(), dim=1)
    assert float(cos.min()) > 0.9999
