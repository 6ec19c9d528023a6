"""esd() streaming from shards and sharded across torch.distributed ranks.

- the balanced split: every item exactly once, the LPT bounds against a brute-force optimum,
  a hand-worked case where LPT is not optimal;
- the batch plan: budget respected, shapes never mixed, one matrix read at a time;
- a sharded safetensors folder (with its index) gives the frame of the in-memory module;
- two gloo processes (spawned here, with torchrun's environment) give the single-process frame
  of tiny-llama-wt, raise ParameterError on every rank when the ranks see different matrices,
  and raise on every rank when one rank fails (no rank is left waiting);
- bad values of batch_bytes / distributed raise ParameterError naming them.
"""
from __future__ import annotations

import gc
import itertools
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specmetrics
from specmetrics import ParameterError, esd
from specmetrics.models.matrices import WeightMatrix
from specmetrics.spectrum.distributed import balanced_split, matrix_cost
from specmetrics.spectrum.eigen import layer_eigenvalues, plan_batches, working_bytes

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of \w+ must be .+\. Got .+ instead\.$")
TIMEOUT_S = 120


# ---------------------------------------------------------------------------
# balanced_split (pure)
# ---------------------------------------------------------------------------


def _loads(costs, shares):
    return [sum(costs[i] for i in s) for s in shares]


def _optimum(costs, k):
    best = float("inf")
    for assign in itertools.product(range(k), repeat=len(costs)):
        loads = [0.0] * k
        for c, r in zip(costs, assign):
            loads[r] += c
        best = min(best, max(loads))
    return best if costs else 0.0


@settings(max_examples=60)
@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=7), st.integers(1, 3))
def test_split_places_every_item_once_within_the_lpt_bounds(costs, k):
    shares = balanced_split(costs, k)
    assert len(shares) == k
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))
    assert all(s == sorted(s) for s in shares)
    worst = max(_loads(costs, shares))
    opt = _optimum(costs, k)
    tol = 1e-9 * (1 + sum(costs))
    assert worst <= opt + max(costs, default=0.0) + tol
    assert worst <= (4 / 3 - 1 / (3 * k)) * opt + tol  # Graham's LPT bound


@settings(max_examples=40)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=200), st.integers(1, 16))
def test_split_of_many_items_is_within_the_list_scheduling_bound(costs, k):
    shares = balanced_split(costs, k)
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))
    assert max(_loads(costs, shares)) <= sum(costs) / k + max(costs)


def test_split_hand_worked_case():
    # LPT on [5, 4, 3, 3, 3] over 2 ranks: 5|4, 3->rank 1 (7), 3->rank 0 (8), 3->rank 1 (10);
    # the optimum is 9 (5+4 | 3+3+3), within Graham's 7/6 bound
    assert balanced_split([5, 4, 3, 3, 3], 2) == [[0, 3], [1, 2, 4]]
    assert balanced_split([], 3) == [[], [], []]
    assert balanced_split([1.0, 2.0], 1) == [[0, 1]]


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_split_rejects_bad_world_size(bad):
    with pytest.raises(ParameterError, match="world_size"):
        balanced_split([1.0], bad)


def test_split_rejects_negative_costs():
    with pytest.raises(ParameterError, match="costs"):
        balanced_split([1.0, -2.0], 2)


def test_matrix_cost_is_gram_plus_eigvalsh():
    w = WeightMatrix("a", "linear", (300, 100), 30000, lambda: None)
    assert matrix_cost(w) == 100 * 100 * (300 + 100)
    assert matrix_cost(WeightMatrix("b", "linear", (100, 300), 30000, lambda: None)) == matrix_cost(w)


# ---------------------------------------------------------------------------
# streaming: the batch plan and one matrix read at a time
# ---------------------------------------------------------------------------


def _tracked(shapes, seed=0):
    """WeightMatrix records whose loaders make fresh tensors, tracking how many are alive."""
    alive: set = set()
    peak = [0]
    gen = torch.Generator().manual_seed(seed)
    data = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]

    def loader(i):
        def load():
            gc.collect()
            t = data[i].clone()
            key = id(t)
            alive.add(key)
            weakref.finalize(t, alive.discard, key)
            peak[0] = max(peak[0], len(alive))
            return t
        return load

    mats = [WeightMatrix(f"m{i}", "linear", s, s[0] * s[1], loader(i)) for i, s in enumerate(shapes)]
    return mats, data, peak


def test_plan_respects_the_budget_and_never_mixes_shapes():
    shapes = [(40, 30), (30, 40), (40, 30), (40, 30), (64, 16), (40, 30), (40, 30)]
    mats, _, _ = _tracked(shapes)
    per = working_bytes(mats[0], torch.float64)
    assert per == (40 * 30 + 30 * 30) * 8
    batches = plan_batches(mats, dtype=torch.float64, batch_bytes=2 * per)
    assert sorted(i for b in batches for i in b) == list(range(len(mats)))
    assert batches[0] == [0, 2] and batches[1] == [3, 5] and batches[2] == [6]
    for b in batches:
        assert len({mats[i].shape for i in b}) == 1
        assert sum(working_bytes(mats[i], torch.float64) for i in b) <= 2 * per or len(b) == 1
    # a budget below one matrix: one matrix per batch
    assert all(len(b) == 1 for b in plan_batches(mats, dtype=torch.float64, batch_bytes=1))


def test_layer_eigenvalues_reads_one_matrix_at_a_time_and_any_plan_gives_the_same_values():
    shapes = [(40, 30)] * 5 + [(30, 50)] * 3
    mats, data, peak = _tracked(shapes)
    budget = 3 * working_bytes(mats[0], torch.float64)
    got = {w.name: ev for w, ev in layer_eigenvalues(mats, dtype=torch.float64, device=torch.device("cpu"),
                                                    method="gram", batch_bytes=budget)}
    assert peak[0] == 1  # each tensor read is dropped before the next is read
    for i, w in enumerate(mats):
        ref = np.sort(torch.linalg.svdvals(data[i]).numpy() ** 2)
        np.testing.assert_allclose(got[w.name], ref, rtol=1e-10)
    reversed_plan = [[i] for i in reversed(range(len(mats)))]
    other = dict((w.name, ev) for w, ev in layer_eigenvalues(
        mats, dtype=torch.float64, device=torch.device("cpu"), method="gram", batch_bytes=budget,
        batches=reversed_plan))
    for name in got:
        np.testing.assert_allclose(other[name], got[name], rtol=1e-12)


class _Block(torch.nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.attn = torch.nn.Linear(d, d, bias=False)   # registered in name order, as the
        self.down = torch.nn.Linear(f, d, bias=False)   # natural order of a checkpoint without
        self.up = torch.nn.Linear(d, f, bias=False)     # config.json lists them


class _Net(torch.nn.Module):
    def __init__(self, d=48, f=96, vocab=200, blocks=3):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(_Block(d, f) for _ in range(blocks))


def _write_shards(state: dict, folder: Path, n_shards: int) -> None:
    from safetensors.torch import save_file

    keys = list(state)
    weight_map = {}
    for s in range(n_shards):
        name = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[s::n_shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))


def test_sharded_safetensors_folder_gives_the_in_memory_frame(tmp_path):
    torch.manual_seed(0)
    net = _Net().double()
    _write_shards(net.state_dict(), tmp_path, 3)
    memory = esd(net).to_frame()
    streamed = esd(tmp_path).to_frame()
    small_batches = esd(tmp_path, batch_bytes=1).to_frame()  # one matrix per batch
    assert list(streamed.index) == list(memory.index) == ["embed_tokens"] + [
        f"layers.{b}.{m}" for b in range(3) for m in ("attn", "down", "up")]
    pd.testing.assert_frame_equal(streamed, memory)
    pd.testing.assert_frame_equal(small_batches, memory, rtol=1e-12)


# ---------------------------------------------------------------------------
# bad values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, name", [
    (dict(batch_bytes=0), "batch_bytes"),
    (dict(batch_bytes="1GB"), "batch_bytes"),
    (dict(batch_bytes=2.5), "batch_bytes"),
    (dict(batch_bytes=True), "batch_bytes"),
    (dict(distributed="yes"), "distributed"),
    (dict(distributed=1), "distributed"),
    (dict(distributed=True, backend="weightwatcher"), "distributed"),
])
def test_bad_streaming_and_distributed_options_raise(kwargs, name):
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        esd(torch.randn(30, 20), **kwargs)
    assert info.value.parameter == name


def test_distributed_without_a_process_group_or_torchrun_raises(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        esd(torch.randn(30, 20), distributed=True)
    assert info.value.parameter == "distributed" and "torchrun" in str(info.value)


# ---------------------------------------------------------------------------
# two gloo ranks
# ---------------------------------------------------------------------------

WORKER = r'''
import os, pickle, sys, traceback
import torch
torch.set_num_threads(1)
import torch.distributed as dist
import specmetrics
from specmetrics import ParameterError, SpecmetricsError

source, out, batch_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
rank = int(os.environ["RANK"])
res = {}
# 1. the process group made from torchrun's environment by esd itself (destroyed afterwards)
report = specmetrics.esd(source, distributed=True, batch_bytes=batch_bytes)
res["frame"] = report.to_frame()
res["eigenvalues"] = {k: v.eigenvalues for k, v in report.items()}
res["group_left"] = dist.is_initialized()
# 2. a group made by the caller: the ranks disagree on the matrices
dist.init_process_group("gloo")
try:
    specmetrics.esd(source, distributed=True, batch_bytes=batch_bytes,
                    exclude=r"layers\.5\." if rank == 1 else None)
except ParameterError as err:
    res["mismatch"] = (err.parameter, str(err))
# 3. one rank fails while listing: every rank raises, none hangs
try:
    specmetrics.esd(source if rank == 0 else os.path.join(out, "missing.safetensors"),
                    distributed=True)
except ParameterError as err:
    res["failure"] = ("ParameterError", str(err))
except SpecmetricsError as err:
    res["failure"] = (type(err).__name__, str(err))
res["group_kept"] = dist.is_initialized()
dist.destroy_process_group()
with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as fh:
    pickle.dump(res, fh)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path: Path, source: Path, world: int, batch_bytes: int) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, str(script), str(source), str(tmp_path),
                                       str(batch_bytes)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{text[-3000:]}"
    return [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_llama_dir):
    source = tiny_llama_dir / "model.safetensors"
    if not source.is_file():
        pytest.skip(f"tiny-llama-wt has no model.safetensors at {source}")
    tmp = tmp_path_factory.mktemp("dist")
    batch_bytes = 1 << 20  # several batches per shape: the batches are what the ranks share
    results = _spawn(tmp, source, 2, batch_bytes)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the same intra-op thread count as the ranks
    try:
        reference = esd(source, batch_bytes=batch_bytes)
    finally:
        torch.set_num_threads(previous)
    return source, results, reference


@pytest.mark.shared
def test_distributed_frame_equals_the_single_process_frame(two_ranks):
    _, results, reference = two_ranks
    expected = reference.to_frame()
    assert len(expected) > 10
    for res in results:  # every rank returns the full report, in the model's order
        pd.testing.assert_frame_equal(res["frame"], expected, check_exact=True)
        for name, layer in reference.items():
            np.testing.assert_array_equal(res["eigenvalues"][name], layer.eigenvalues)
        assert res["group_left"] is False  # the group esd made is destroyed again


@pytest.mark.shared
def test_ranks_seeing_different_matrices_raise_on_every_rank(two_ranks):
    _, results, _ = two_ranks
    for res in results:
        parameter, message = res["mismatch"]
        assert parameter == "source"
        assert PARAM_MESSAGE.match(message), message
        assert "rank 0:" in message and "rank 1:" in message and "every rank" in message
        assert res["group_kept"] is True  # a group the caller made is left alone


@pytest.mark.shared
def test_a_failing_rank_makes_every_rank_raise(two_ranks):
    _, results, _ = two_ranks
    assert results[1]["failure"][0] == "ParameterError"  # its own error (no such file)
    kind, message = results[0]["failure"]
    assert kind == "SpecmetricsError"
    assert "rank 1 of 2 failed" in message and "ParameterError" in message


@pytest.mark.slow
@pytest.mark.shared
def test_torchrun_cli_writes_the_single_process_table(tmp_path, tiny_llama_dir):
    """``torchrun --nproc-per-node 2 -m specmetrics esd SOURCE --distributed --out``."""
    source = tiny_llama_dir / "model.safetensors"
    out = tmp_path / "esd.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "specmetrics", "esd", str(source), "--distributed", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("matrices, torch backend") == 1  # rank 0 prints, once
    got = pd.read_csv(out, index_col=0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count (OMP_NUM_THREADS=1): the same round-off
    try:
        expected = esd(source).to_frame()
    finally:
        torch.set_num_threads(previous)
    assert list(got.index) == list(expected.index)
    numeric = [c for c in expected.columns if expected[c].dtype.kind == "f"]
    np.testing.assert_allclose(got[numeric].to_numpy(float), expected[numeric].to_numpy(float),
                               rtol=1e-12, equal_nan=True)
