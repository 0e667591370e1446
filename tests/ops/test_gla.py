"""ops.gla: every backend against the naive recurrence, and the naive one against the spec's GQA-expanded form (§3.6).
Covers GQA, odd lengths, fp32/bf16 inputs, extreme gates, varlen batches with slots, chunked prefill and decode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vllm_neuronchip
from vllm_neuronchip.ops import gla
from vllm_neuronchip.ops.gla import chunk, naive, triton_chunk

HEADS = [(4, 1), (4, 2), (2, 2)]  # (H, Hkv)
DIMS = [(16, 16), (64, 64), (32, 64)]  # (K, V)
LENGTHS = [1, 5, 63, 64, 65, 200]
DTYPES = [torch.float32, torch.bfloat16]
SCALE = 0.3


def make_gate(shape, kind):
    if kind == "logsigmoid":  # the model's g = logsigmoid(z) / 16
        return F.logsigmoid(torch.randn(shape) * 4) / 16
    if kind == "strong":
        return -30 - 30 * torch.rand(shape)
    if kind == "near_zero":
        return -1e-4 * torch.rand(shape)
    assert kind == "mixed"  # strong steps between near-zero ones: no exponent may be a difference of large sums
    return torch.where(torch.rand(shape) < 0.2, -60 * torch.rand(shape), -1e-3 * torch.rand(shape))


def make_inputs(T, H, Hkv, K, V, dtype=torch.float32, gate="logsigmoid"):
    q, k = torch.randn(T, H, K), torch.randn(T, Hkv, K)
    v, g = torch.randn(T, Hkv, V), make_gate((T, Hkv, K), gate)
    return tuple(x.to(dtype) for x in (q, k, v, g))


def assert_matches(actual, expected, rtol=1e-5):
    """fp32 and equal up to rtol of the largest magnitude (rounding of differently ordered sums)."""
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * max(expected.abs().max().item(), 1e-3))


def spec_reference(q, k, v, g, initial_state, scale):
    """Spec §3.6: k/v/g repeated to all H query heads, one state per query head."""
    G = q.shape[1] // k.shape[1]
    q, k, v, g = (x.float() for x in (q, k, v, g))
    k, v, g = (x.repeat_interleave(G, dim=1) for x in (k, v, g))
    S = initial_state.float().repeat_interleave(G, dim=0)
    o = []
    for t in range(q.shape[0]):
        S = S * g[t].exp()[..., None] + k[t, :, :, None] * v[t, :, None, :]
        o.append(torch.einsum("hk,hkv->hv", q[t] * scale, S))
    return torch.stack(o), S[::G]


@pytest.mark.parametrize("H,Hkv", HEADS)
@pytest.mark.parametrize("T", [1, 7, 40])
def test_naive_matches_spec_reference(H, Hkv, T):
    torch.manual_seed(0)
    q, k, v, g = make_inputs(T, H, Hkv, 16, 32)
    S0 = torch.randn(Hkv, 16, 32)
    o, S = naive.naive_recurrent_gla(q, k, v, g, S0, SCALE)
    o_ref, S_ref = spec_reference(q, k, v, g, S0, SCALE)
    assert_matches(o, o_ref)
    assert_matches(S, S_ref)


def check_chunk(T, H, Hkv, K, V, dtype=torch.float32, gate="logsigmoid"):
    q, k, v, g = make_inputs(T, H, Hkv, K, V, dtype, gate)
    S0 = torch.randn(Hkv, K, V)
    o, S = chunk.chunk_gla(q, k, v, g, S0, SCALE)
    o_ref, S_ref = naive.naive_recurrent_gla(q, k, v, g, S0, SCALE)
    assert o.isfinite().all() and S.isfinite().all()
    assert_matches(o, o_ref)
    assert_matches(S, S_ref)


@pytest.mark.parametrize("H,Hkv", HEADS)
@pytest.mark.parametrize("K,V", DIMS)
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_matches_naive(H, Hkv, K, V, T, dtype):
    torch.manual_seed(T)
    check_chunk(T, H, Hkv, K, V, dtype)


@pytest.mark.parametrize("gate", ["strong", "near_zero", "mixed"])
@pytest.mark.parametrize("T", [5, 65, 300])
def test_chunk_matches_naive_extreme_gates(gate, T):
    torch.manual_seed(1)
    check_chunk(T, 4, 2, 32, 64, gate=gate)


def test_chunk_long_sequence_crosses_segments():
    torch.manual_seed(2)
    check_chunk(2 * chunk.SEGMENT + 37, 4, 1, 16, 16)


def test_comparison_catches_a_wrong_decay():
    torch.manual_seed(3)
    q, k, v, g = make_inputs(64, 4, 2, 16, 16)
    S0 = torch.randn(2, 16, 16)
    o, S = chunk.chunk_gla(q, k, v, g, S0, SCALE)
    o_wrong, S_wrong = naive.naive_recurrent_gla(q, k, v, g * 1.001, S0, SCALE)
    with pytest.raises(AssertionError):
        assert_matches(o, o_wrong)
    with pytest.raises(AssertionError):
        assert_matches(S, S_wrong)


VARLEN = {"naive": naive.gla_varlen, "chunk": chunk.gla_varlen, "public": gla.gla_varlen}
DECODE = {"naive": naive.gla_decode, "chunk": chunk.gla_decode, "public": gla.gla_decode}


def make_batch(lengths, H, Hkv, K, V, num_slots, dtype=torch.float32, gate="logsigmoid"):
    """Packed inputs, a random slot per sequence, random warm flags; fresh and unused slots hold NaN."""
    q, k, v, g = make_inputs(sum(lengths), H, Hkv, K, V, dtype, gate)
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    slots = torch.randperm(num_slots)[: len(lengths)].to(torch.int32)
    warm = torch.rand(len(lengths)) < 0.5
    state = torch.randn(num_slots, Hkv, K, V)
    garbage = torch.ones(num_slots, dtype=torch.bool)
    garbage[slots.long()] = ~warm
    state[garbage] = float("nan")
    return q, k, v, g, cu_seqlens, slots, warm, state


def expected_varlen(q, k, v, g, cu_seqlens, slots, warm, state):
    """Per-sequence naive recurrence, written out here so that the backends' slot handling is tested too."""
    o, state = [], state.clone()
    for i, slot in enumerate(slots.tolist()):
        a, b = cu_seqlens[i].item(), cu_seqlens[i + 1].item()
        S0 = state[slot] if warm[i] else torch.zeros_like(state[slot])
        o_i, state[slot] = naive.naive_recurrent_gla(q[a:b], k[a:b], v[a:b], g[a:b], S0, SCALE)
        o.append(o_i)
    return torch.cat(o), state


def packed_views(q, k, v, g):
    """q, k, v, g as column slices of one packed [T, (H + 3 Hkv) d] tensor, as the model's GLA layer passes them."""
    packed = torch.cat([x.flatten(1) for x in (q, k, v, g)], dim=1)
    views = packed.split([x[0].numel() for x in (q, k, v, g)], dim=1)
    return tuple(view.view(x.shape) for view, x in zip(views, (q, k, v, g)))


def check_varlen_batch(varlen, lengths, H, Hkv, K, V, dtype=torch.float32, gate="logsigmoid", packed=False,
                       device="cpu", rtol=1e-5):
    """A batch of `make_batch` through `varlen` on `device` (inputs as `packed_views` if packed) against
    `expected_varlen` (computed on the CPU)."""
    batch = make_batch(lengths, H, Hkv, K, V, len(lengths) + 3, dtype, gate)
    o_ref, state_ref = expected_varlen(*batch)
    q, k, v, g, cu_seqlens, slots, warm, state = (x.to(device) for x in batch)
    if packed:
        q, k, v, g = packed_views(q, k, v, g)
    o = varlen(
        q, k, v, g, state=state, state_indices=slots, cu_seqlens=cu_seqlens, has_initial_state=warm, scale=SCALE
    ).cpu()
    state = state.cpu()
    assert o.isfinite().all()
    assert_matches(o, o_ref, rtol)
    used = torch.zeros(len(state), dtype=torch.bool)
    used[slots.long().cpu()] = True
    assert_matches(state[used], state_ref[used], rtol)
    assert state[~used].isnan().all()  # slots outside the batch untouched


@pytest.mark.parametrize("backend", VARLEN)
@pytest.mark.parametrize("H,Hkv", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_varlen_batch(backend, H, Hkv, dtype, seed):
    torch.manual_seed(seed)
    check_varlen_batch(VARLEN[backend], [65, 1, 130, 16, 7], H, Hkv, 32, 64, dtype)


@pytest.mark.parametrize("backend", VARLEN)
@pytest.mark.parametrize("split", [1, 63, 64, 100])
def test_chunked_prefill_carries_state(backend, split):
    torch.manual_seed(split)
    T, H, Hkv, K, V = 150, 4, 2, 32, 64
    q, k, v, g = make_inputs(T, H, Hkv, K, V)

    def prefill(a, b, state, warm):
        return VARLEN[backend](
            q[a:b], k[a:b], v[a:b], g[a:b], state=state, state_indices=torch.tensor([3], dtype=torch.int32),
            cu_seqlens=torch.tensor([0, b - a], dtype=torch.int32), has_initial_state=torch.tensor([warm]),
            scale=SCALE,
        )

    state_whole, state_parts = torch.full((5, Hkv, K, V), float("nan")), torch.full((5, Hkv, K, V), float("nan"))
    o_whole = prefill(0, T, state_whole, False)
    o_parts = torch.cat([prefill(0, split, state_parts, False), prefill(split, T, state_parts, True)])
    assert_matches(o_parts, o_whole)
    assert_matches(state_parts[3], state_whole[3])


def decode_after_prefill(decode, prompt_lengths, steps, H=4, Hkv=2, K=32, V=64):
    """Prefill fresh sequences, then decode `steps` tokens each in batches with a padding row (slot -1) at row 1;
    every output and final state must equal the naive recurrence over each whole sequence."""
    N = len(prompt_lengths)
    lengths = [p + steps for p in prompt_lengths]
    starts = [sum(lengths[:i]) for i in range(N)]
    q, k, v, g = make_inputs(sum(lengths), H, Hkv, K, V)
    slots = torch.tensor([4, 0, 2][:N], dtype=torch.int32)
    state = torch.full((6, Hkv, K, V), float("nan"))

    prompt = torch.cat([torch.arange(s, s + p) for s, p in zip(starts, prompt_lengths)])
    cu_seqlens = torch.tensor([0, *prompt_lengths]).cumsum(0).to(torch.int32)
    o_prefill = chunk.gla_varlen(
        q[prompt], k[prompt], v[prompt], g[prompt], state=state, state_indices=slots, cu_seqlens=cu_seqlens,
        has_initial_state=torch.zeros(N, dtype=torch.bool), scale=SCALE,
    )
    state_indices = torch.cat([slots[:1], torch.tensor([-1], dtype=torch.int32), slots[1:]])
    o_decode = []
    for step in range(steps):
        rows = torch.tensor([s + p + step for s, p in zip(starts, prompt_lengths)])
        rows = torch.cat([rows[:1], rows[:1], rows[1:]])  # the padding row carries a real token's inputs
        o = decode(q[rows], k[rows], v[rows], g[rows], state=state, state_indices=state_indices,
                   has_initial_state=torch.ones(N + 1, dtype=torch.bool), scale=SCALE)
        assert torch.equal(o[1], torch.zeros_like(o[1]))
        o_decode.append(o[[0, *range(2, N + 1)]])

    for i, (a, p) in enumerate(zip(starts, prompt_lengths)):
        b = a + lengths[i]
        o_ref, S_ref = naive.naive_recurrent_gla(q[a:b], k[a:b], v[a:b], g[a:b], torch.zeros(Hkv, K, V), SCALE)
        assert_matches(o_prefill[cu_seqlens[i] : cu_seqlens[i + 1]], o_ref[:p])
        assert_matches(torch.stack([o[i] for o in o_decode]), o_ref[p:])
        assert_matches(state[slots[i]], S_ref)
    assert state[[1, 3, 5]].isnan().all()  # slots of no sequence (and slot -1 is not state[-1])


@pytest.mark.parametrize("backend", DECODE)
@pytest.mark.parametrize("prompt_lengths", [[1, 70, 16], [64]])
def test_decode_after_prefill(backend, prompt_lengths):
    torch.manual_seed(len(prompt_lengths))
    decode_after_prefill(DECODE[backend], prompt_lengths, steps=4)


def check_decode_fresh_slot(decode, dtype):
    """Rows: a fresh slot holding NaN, a padding row, a warm slot; slots 0 and 2 are not in the batch. As the GLA
    layer calls it: inputs are column slices of one packed tensor, the output goes into rows of a larger one."""
    q, k, v, g = make_inputs(3, 4, 2, 32, 32, dtype)
    state = torch.randn(4, 2, 32, 32)
    state[1] = float("nan")
    slots, warm = torch.tensor([1, -1, 3], dtype=torch.int32), torch.tensor([False, True, True])
    expected = state.clone()
    o_ref = naive.gla_decode(q, k, v, g, state=expected, state_indices=slots, has_initial_state=warm, scale=SCALE)
    output = torch.full((5, 4, 32), float("nan"))
    o = decode(*packed_views(q, k, v, g), state=state, state_indices=slots, has_initial_state=warm, scale=SCALE,
               out=output[1:4])
    assert o.data_ptr() == output[1].data_ptr() and torch.isnan(output[[0, 4]]).all()
    assert_matches(o, o_ref)
    assert torch.equal(o[1], torch.zeros_like(o[1]))
    assert_matches(state[[1, 3]], expected[[1, 3]])
    assert torch.equal(state[[0, 2]], expected[[0, 2]])


@pytest.mark.parametrize("backend", DECODE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_fresh_slot_and_padding(backend, dtype):
    torch.manual_seed(4)
    check_decode_fresh_slot(DECODE[backend], dtype)


# Triton reads TRITON_INTERPRET when it is first imported, hence a fresh process.
INTERPRETER_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
import test_gla as t
from vllm_neuronchip.ops.gla import fla
for H, Hkv, K, V in [(4, 1, 16, 16), (4, 2, 32, 64), (2, 2, 64, 64), (6, 2, 24, 40)]:
    torch.manual_seed(H + K)
    t.decode_after_prefill(fla.gla_decode, [3, 17], steps=3, H=H, Hkv=Hkv, K=K, V=V)
for dtype in t.DTYPES:
    t.check_decode_fresh_slot(fla.gla_decode, dtype)
print("triton decode ok")
"""

TRITON_PREFILL_CHECK = """
import functools, sys, torch
sys.path.insert(0, {tests!r})
import test_gla as t
from vllm_neuronchip.ops.gla import triton_chunk
# Cumsums stored in fp32 (the default) are off by up to half an ulp of their magnitude, which the 'mixed' gates
# (-60 a token) make 4e-5: those run with the fp64-stored cumsums.
fp64 = functools.partial(triton_chunk.gla_varlen, tiles=triton_chunk.Tiles(gc_fp64=True))
for i, (H, Hkv, K, V) in enumerate([(4, 1, 16, 16), (4, 2, 32, 64), (4, 2, 64, 32)]):
    for gate in ["logsigmoid", "strong", "mixed"]:
        varlen = fp64 if gate == "mixed" else triton_chunk.gla_varlen
        for dtype in t.DTYPES:
            torch.manual_seed(i)
            packed = dtype == torch.float32 or gate == "mixed"
            t.check_varlen_batch(varlen, [65, 1, 130, 5, 63, 64], H, Hkv, K, V, dtype, gate, packed)
# Launch alternatives benchmarks/gla_prefill.py --sweep times: the previous defaults, the heads-first grid.
alternatives = [triton_chunk.Tiles(scan_bk=32, scan_warps=8, scores_warps=4, output_warps=8, gc_fp64=True),
                triton_chunk.Tiles(heads_first=True, scan_prefetch=True)]
for tiles in alternatives:
    torch.manual_seed(7)
    varlen = functools.partial(triton_chunk.gla_varlen, tiles=tiles)
    t.check_varlen_batch(varlen, [65, 1, 130, 5], 4, 2, 32, 64, torch.float32, "logsigmoid", packed=True)
print("triton prefill ok")
"""


def run_in_interpreter(check: str, done: str):
    """Runs a check script in a fresh process with TRITON_INTERPRET=1; it must print `done`."""
    pytest.importorskip("triton", reason="triton is not installed")
    root = Path(vllm_neuronchip.__file__).parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, "-c", check.format(tests=str(Path(__file__).parent))],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0 and done in run.stdout, run.stdout + run.stderr


def test_triton_decode_in_interpreter():
    run_in_interpreter(INTERPRETER_CHECK, "triton decode ok")


def test_chunk_table_and_its_reuse_within_a_step():
    chunks, first_chunk = triton_chunk.chunk_table([0, 3, 3, 140], chunk_size=64)  # an empty sequence in between
    assert chunks.tolist() == [[0, 0], [2, 3], [2, 67], [2, 131]] and first_chunk.tolist() == [0, 1, 1]
    bounds = torch.tensor([0, 3, 3, 140])
    table = triton_chunk.device_chunk_table(bounds)
    assert triton_chunk.device_chunk_table(bounds) is table  # the layers of a step share one bounds tensor
    other = triton_chunk.device_chunk_table(torch.tensor([0, 65]))  # the next step's
    assert other is not table and other[0].tolist() == [[0, 0], [0, 64]]


def test_triton_prefill_in_interpreter():
    """triton_chunk against the recurrence: GQA, K != V, lengths 1 to 130 with warm and fresh (NaN) slots,
    gates down to -60 a token, fp32 and bf16, strided inputs."""
    run_in_interpreter(TRITON_PREFILL_CHECK, "triton prefill ok")


@pytest.mark.gpu
@pytest.mark.parametrize("H,Hkv", HEADS)
def test_fla_varlen_on_cuda(H, Hkv):
    pytest.importorskip("fla", reason="fla-core is not installed")
    torch.manual_seed(6)
    # fla's fp32 dots run in tf32 on Ampere and newer
    check_varlen_batch(gla.gla_varlen, [65, 1, 300, 16, 7], H, Hkv, 64, 64, torch.bfloat16, device="cuda", rtol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("H,Hkv", HEADS)
def test_triton_varlen_on_cuda(H, Hkv):
    torch.manual_seed(6)
    for dtype, gate in [(torch.bfloat16, "logsigmoid"), (torch.float32, "mixed")]:
        # fp32 dots run in tf32 on the GPU, as fla's do
        check_varlen_batch(triton_chunk.gla_varlen, [65, 1, 300, 16, 7], H, Hkv, 64, 64, dtype, gate, packed=True,
                           device="cuda", rtol=2e-3)


@pytest.mark.gpu
def test_triton_prefill_setting_matches_fla_at_the_7b_shape(neuronchip_env):
    """H 28, Hkv 4, K = V = 128, fp32 strided inputs: NEURONCHIP_GLA_PREFILL=triton (the default) against fla."""
    pytest.importorskip("fla", reason="fla-core is not installed")
    torch.manual_seed(9)
    batch = [x.cuda() for x in make_batch([300, 1, 129, 64], 28, 4, 128, 128, 6)]
    q, k, v, g = packed_views(*batch[:4])
    cu_seqlens, slots, warm, state = batch[4:]
    results = {}
    for backend in ("fla", "triton"):
        neuronchip_env(GLA_PREFILL=backend)
        s = state.clone()
        o = gla.gla_varlen(q, k, v, g, state=s, state_indices=slots, cu_seqlens=cu_seqlens, has_initial_state=warm,
                           scale=SCALE)
        results[backend] = o, s[slots.long()]
    for fla_result, triton_result in zip(results["fla"], results["triton"]):
        assert_matches(triton_result, fla_result, rtol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fla_decode_on_cuda(dtype):
    torch.manual_seed(7)

    def on_cuda(q, k, v, g, *, state, state_indices, has_initial_state, scale, out=None):
        """The same call on the GPU: inputs packed there as given (strided views stay strided), out copied back."""
        inputs = packed_views(*(x.cuda() for x in (q, k, v, g))) if q.stride(0) != q[0].numel() else (
            x.cuda() for x in (q, k, v, g))
        cuda_state = state.cuda()
        o = gla.gla_decode(*inputs, state=cuda_state, state_indices=state_indices.cuda(),
                           has_initial_state=has_initial_state.cuda(), scale=scale,
                           out=None if out is None else out.cuda())
        state.copy_(cuda_state.cpu())
        return o.cpu() if out is None else out.copy_(o.cpu())

    check_decode_fresh_slot(on_cuda, dtype)
    decode_after_prefill(on_cuda, [1, 70, 16], steps=4, H=28, Hkv=4, K=128, V=128)


@pytest.mark.gpu
def test_fla_decode_replays_in_cuda_graph():
    torch.manual_seed(8)
    N, H, Hkv, K, V = 4, 28, 4, 128, 128
    inputs = [x.cuda() for x in make_inputs(N, H, Hkv, K, V)]  # static buffers the graph reads
    state = torch.randn(6, Hkv, K, V, device="cuda")
    slots = torch.tensor([5, -1, 0, 2], dtype=torch.int32, device="cuda")
    warm = torch.ones(N, dtype=torch.bool, device="cuda")

    def step():
        return gla.gla_decode(*inputs, state=state, state_indices=slots, has_initial_state=warm, scale=SCALE)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernel outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o = step()

    for _ in range(3):
        new = make_inputs(N, H, Hkv, K, V)
        for buffer, x in zip(inputs, new):
            buffer.copy_(x)
        expected = state.cpu()
        o_ref = naive.gla_decode(*new, state=expected, state_indices=slots.cpu(), has_initial_state=warm.cpu(),
                                 scale=SCALE)
        graph.replay()
        assert_matches(o.cpu(), o_ref)
        assert_matches(state.cpu(), expected)
