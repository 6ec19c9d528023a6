"""``sparsify_activations(..., backend="triton")``: the kernels give the reference's logits.

Without CUDA the kernels run in the Triton interpreter (``TRITON_INTERPRET=1`` is set below,
before anything imports the kernels' Triton modules). Tolerance: the two backends compute the
same float32 products in different summation orders, so logits agree to ``atol=2e-4``
(``rtol=1e-4``) on tiny-llama-wt (the largest difference measured here: a few 1e-6), and the
realised sparsity agrees to 1e-3 per site (a value within rounding of a threshold may fall on
either side; none did here).
"""
from __future__ import annotations

import inspect
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tiny_models import build, token_windows  # noqa: E402
from specmetrics import ParameterError, UnsupportedModelError  # noqa: E402
from specmetrics.activations import abs_threshold, find_sites  # noqa: E402
from specmetrics.activations.sparsify import TorchThreshold, sparsify_activations  # noqa: E402
from specmetrics.activations.triton_backend import TritonSparse  # noqa: E402
from specmetrics.kernels import triton_available  # noqa: E402

needs_triton = pytest.mark.skipif(not triton_available(),
                                  reason="needs the 'triton' package (specmetrics[triton])")

ATOL, RTOL = 2e-4, 1e-4
TEAL = ("qkv", "o", "gate_up", "down")


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def dense_thresholds(model, ids, kinds, s=0.5):
    """The ``s``-quantile of ``|x|`` at each site, read from one dense forward pass."""
    sites = find_sites(model, sites=kinds)
    seen, handles = {}, []

    def reader(name, site):
        def hook(_module, args, output):
            seen.setdefault(name, (output if site.hook == "output" else args[0]).detach())
        return hook

    for name, site in sites.items():
        module = model.get_submodule(site.module)
        handles.append(module.register_forward_hook(reader(name, site)))
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return {n: abs_threshold(v, s) for n, v in seen.items()}


def decode_logits(model, ids, prompt):
    """Logits of a prefill over ``ids[:, :prompt]`` and then one token at a time (KV cache)."""
    # transformers 5.x calls the cache `cache`; 4.x `past_key_values`
    key = "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"
    with torch.no_grad():
        out = model(ids[:, :prompt], use_cache=True)
        steps, cache = [out.logits], getattr(out, key)
        for i in range(prompt, ids.shape[1]):
            out = model(ids[:, i:i + 1], use_cache=True, **{key: cache})
            steps.append(out.logits)
            cache = getattr(out, key)
    return torch.cat(steps, dim=1)


def run(model, thresholds, ids, prompt, **kwargs):
    with sparsify_activations(model, thresholds, **kwargs) as handle:
        logits = decode_logits(model, ids, prompt)
    return logits, handle.realised()


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.randint(3, 4096, (1, 32), generator=torch.Generator().manual_seed(0))
    return model, ids


@needs_triton
@pytest.mark.shared
@pytest.mark.parametrize("style", ["teal", "cats"])
def test_tiny_llama_same_logits_and_sparsity_as_the_reference(tiny_llama, style):
    """One window of 32 tokens: a 30-token prefill (more rows than ``max_rows``: the dense
    product of the masked input), then 2 decode steps of one token (the kernels)."""
    model, ids = tiny_llama
    kinds = TEAL if style == "teal" else ("silu_gate",)
    thr = dense_thresholds(model, ids, kinds)
    dense = decode_logits(model, ids, prompt=30)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected, ref_realised = run(model, thr, ids, 30, backend="torch")
    assert not torch.allclose(expected, dense, atol=1e-2)  # the thresholds do something
    got, realised = run(model, thr, ids, 30, backend="triton")
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    assert realised.keys() == ref_realised.keys()
    for name, value in realised.items():
        assert abs(value - ref_realised[name]) <= 1e-3, name
    assert 0.3 < min(ref_realised.values()) and max(ref_realised.values()) < 0.9
    # removed: the same weights, row-major again, and the dense outputs (bit for bit up to the
    # CPU GEMV's dependence on memory alignment: the re-stored weights are new allocations)
    assert all(torch.equal(p, weights[n]) and p.is_contiguous()
               for n, p in model.named_parameters())
    torch.testing.assert_close(decode_logits(model, ids, prompt=30), dense, atol=1e-5,
                               rtol=1e-6)


@needs_triton
@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("style", ["teal", "cats"])
def test_tiny_llama_every_row_through_the_kernels(tiny_llama, style):
    """``max_rows=32``: the 28-token prefill runs the kernels too (slow in the interpreter)."""
    model, ids = tiny_llama
    kinds = TEAL if style == "teal" else ("silu_gate",)
    thr = dense_thresholds(model, ids, kinds)
    expected, ref_realised = run(model, thr, ids, 28, backend="torch")
    kernel = TritonSparse(max_rows=32)
    got, realised = run(model, thr, ids, 28, appliers={k: kernel for k in kinds})
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    for name, value in realised.items():
        assert abs(value - ref_realised[name]) <= 1e-3, name


@needs_triton
def test_gpt2_conv1d_and_ungated_mlp_sites():
    """Fused ``c_attn`` (a transformers Conv1D) and the ungated ``silu_gate`` site."""
    model = build("gpt2")
    ids = token_windows(1, 12)
    for kinds in (TEAL, ("silu_gate",)):
        thr = dense_thresholds(model, ids, kinds, 0.4)
        with sparsify_activations(model, thr) as ref, torch.no_grad():
            expected = model(ids).logits
        kernel = TritonSparse(max_rows=16)
        with sparsify_activations(model, thr, appliers={k: kernel for k in kinds}) as got, \
                torch.no_grad():
            out = model(ids).logits
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)
        assert got.realised() == pytest.approx(ref.realised(), abs=1e-3)


@needs_triton
def test_backend_parameter_is_checked_and_cpu_auto_is_the_reference():
    model = build("llama")
    thr = {n: 0.01 for n in find_sites(model, sites=("o",))}
    for bad in ("cuda", "Triton", 1):
        with pytest.raises(ParameterError, match="'backend' parameter of sparsify_activations"):
            sparsify_activations(model, thr, backend=bad)
    with sparsify_activations(model, thr) as handle:
        assert all(isinstance(a, TorchThreshold) for a in handle.appliers.values())
    with sparsify_activations(model, thr, backend="triton") as handle:
        assert all(isinstance(a, TritonSparse) for a in handle.appliers.values())
    assert "forward" not in model.model.layers[0].self_attn.o_proj.__dict__


def test_backend_triton_without_triton_raises_import_error_and_changes_nothing(monkeypatch):
    import sys

    model = build("llama")
    thr = {n: 0.01 for n in find_sites(model, sites=("o",))}
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    with pytest.raises(ImportError, match="needs the 'triton' package"):
        sparsify_activations(model, thr, backend="triton")
    assert "forward" not in model.model.layers[0].self_attn.o_proj.__dict__


@needs_triton
def test_cats_and_teal_mlp_sites_in_one_block_are_refused_and_nothing_stays_installed():
    model = build("llama")
    sites = find_sites(model, sites=("gate_up", "silu_gate"))
    thr = {n: 0.01 for n in sites}
    with pytest.raises(UnsupportedModelError, match="combine CATS and TEAL"):
        sparsify_activations(model, thr, backend="triton")
    for layer in model.model.layers:
        assert "forward" not in layer.mlp.__dict__
        assert "forward" not in layer.mlp.gate_proj.__dict__
    assert all(p.is_contiguous() for p in model.parameters())


@needs_triton
def test_automatic_choice_hands_unsupported_sites_to_the_reference_with_a_warning():
    """``TritonSparse(fallback=...)`` (what backend=None picks on CUDA): a block whose MLP is
    fused for CATS cannot also run a TEAL gate_up kernel; that site runs the reference."""
    from specmetrics import SpecmetricsWarning

    model = build("llama")
    ids = token_windows(1, 6)
    sites = find_sites(model, sites=("gate_up", "silu_gate"))
    thr = {n: 0.02 for n in sites}
    with sparsify_activations(model, thr, backend="torch"), torch.no_grad():
        expected = model(ids).logits
    kernel = TritonSparse(max_rows=8, fallback=TorchThreshold())
    with pytest.warns(SpecmetricsWarning, match="runs the torch reference"):
        handle = sparsify_activations(model, thr, appliers={"gate_up": kernel,
                                                            "silu_gate": kernel})
    with handle, torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@needs_triton
@pytest.mark.slow
def test_torch_compile_traces_the_wrapped_model():
    model = build("llama")
    ids = token_windows(1, 8)
    thr = dense_thresholds(model, ids, TEAL + ("silu_gate",)[:0])
    kernel = TritonSparse(max_rows=8)
    with sparsify_activations(model, thr, appliers={k: kernel for k in TEAL}), \
            torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, backend="aot_eager")(ids).logits
    torch.testing.assert_close(compiled, eager, atol=ATOL, rtol=RTOL)
