"""GQA-aware chunked GLA prefill in our own Triton kernels: the CUDA default (fla's chunk_gla, `fla.py`, with
NEURONCHIP_GLA_PREFILL=fla).

fla has no GQA, so `fla.gla_varlen` repeats k, v, g and the states over the G query heads of each KV head and fla
keeps one fp32 state per query head and chunk. Here k, v, g, the chunk-local gate cumsums and the chunk states stay
per KV head (G = 7 times less state traffic in the 7B model), and q, k, v, g are read through their strides (the
model passes column slices of one packed tensor). Three launches, as fla splits its chunk_gla:

- scan, one program per (sequence, KV head, key block, value block): walks the sequence's chunks of BT tokens,
  records the state entering each chunk and writes the final state to its slot;
- scores, one program per (chunk, query head, block of BC rows): the causal intra-chunk scores A [T, H, BT];
- output, one program per (chunk, query head, value block): o = (q exp(gc)) S_chunk + A v, two tensor-core dots.
  (Computing A inside this kernel, per row block, spilled ~390 registers on sm_90; split, none spill.)

Exponents are never positive (fla's scheme): gc is the cumsum of g within a chunk, the state enters a token as
exp(gc) and k leaves it as exp(gc_last - gc); intra-chunk scores of 16-row sub-blocks use the sub-block's first
row as reference, the diagonal sub-blocks exp(gc_i - gc_j) elementwise. gc is summed in fp64 and by default
stored in fp32, as fla stores its cumsums: off by half an ulp of |gc|, which is enough for the model's gates
(logsigmoid / 16) but made outputs differ from the recurrence by 4e-5 (relative to their largest magnitude) on the
tests' 'mixed' gates (-60 a token between near-zero ones). `Tiles.gc_fp64=True` keeps the fp64 sums, only
differences rounded to fp32: 3e-7 there, at about 1.4x the H100 time of a 16K-token prefill.
"""

import functools
from dataclasses import dataclass

import torch

BT = 64  # tokens per chunk
BC = 16  # rows per intra-chunk sub-block


def chunk_table(cu_seqlens: list[int], chunk_size: int = BT) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks of a packed batch from its sequence bounds: (chunks [n, 2] int32 of (sequence, first token),
    first_chunk [sequences] int32, the index of each sequence's first chunk). Plain CPU work on host bounds."""
    chunks, first_chunk = [], []
    for i, (start, end) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])):
        first_chunk.append(len(chunks))
        chunks.extend((i, t) for t in range(start, end, chunk_size))
    return torch.tensor(chunks, dtype=torch.int32).view(-1, 2), torch.tensor(first_chunk, dtype=torch.int32)


@dataclass(frozen=True)
class Tiles:
    """Launch settings of the three kernels. The defaults combine the H100 winners of `benchmarks/gla_prefill.py
    --sweep` (results/gpu/h100/session_2026-12-07_1630), which times alternatives against them."""

    scan_bk: int = 16  # the scan's state block: K / scan_bk x V / scan_bv programs per sequence and KV head
    scan_bv: int = 32
    scan_warps: int = 4
    scan_prefetch: bool = False  # load the next chunk's k, g, v before this chunk's state update
    scores_warps: int = 2
    output_bv: int = 64
    output_warps: int = 4
    gc_fp64: bool = False  # gate cumsums (always summed in fp64, see the module docstring) stored in fp64 or fp32
    heads_first: bool = False  # scores and output grids: (heads x blocks, chunks) instead of (chunks, heads, blocks)

    def grid(self, chunks: int, heads: int, blocks: int) -> tuple[int, ...]:
        """heads_first puts the programs sharing a chunk's k, v, gc and state next to each other (L2 reuse)."""
        return (heads * blocks, chunks) if self.heads_first else (chunks, heads, blocks)


_last_table: list = [None, None]  # (cu_seqlens tensor, its chunk table on the device), referenced so ids stay unique


def device_chunk_table(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`chunk_table` of these bounds on their device. Its host sync happens once a step: the GLA layers of a step
    share one `cu_seqlens` tensor (`gla_backend`), so the last table is reused while the same tensor comes back."""
    if _last_table[0] is not cu_seqlens:
        _last_table[:] = cu_seqlens, tuple(x.to(cu_seqlens.device) for x in chunk_table(cu_seqlens.tolist()))
    return _last_table[1]


def gla_varlen(q, k, v, g, *, state, state_indices, cu_seqlens, has_initial_state, scale, tiles: Tiles = Tiles()):
    """Same contract as `ops.gla.gla_varlen` (CUDA tensors; q, k, v, g fp32 or bf16, rows may be strided)."""
    import triton

    T, H, K = q.shape
    Hkv, V = v.shape[1], v.shape[2]
    assert all(x.stride(-1) == 1 for x in (q, k, v, g)), "the head dimension must be contiguous"
    chunks, first_chunk = device_chunk_table(cu_seqlens)
    assert not tiles.heads_first or len(chunks) < 65536, "heads_first: at most 65535 chunks (the grid's 2nd axis)"
    chunk_states = q.new_empty(len(chunks), Hkv, K, V, dtype=torch.float32)
    gc = q.new_empty(T, Hkv, K, dtype=torch.float64 if tiles.gc_fp64 else torch.float32)
    o = q.new_empty(T, H, V, dtype=torch.float32)

    bk, bv = min(tiles.scan_bk, K), min(tiles.scan_bv, V)
    _scan_kernel()[(len(first_chunk), Hkv, triton.cdiv(K, bk) * triton.cdiv(V, bv))](
        k, k.stride(0), k.stride(1), v, v.stride(0), v.stride(1), g, g.stride(0), g.stride(1),
        state, *state.stride(), state_indices, has_initial_state, cu_seqlens, first_chunk, chunk_states, gc,
        HKV=Hkv, K=K, V=V, BT=BT, BK=bk, BV=bv, PREFETCH=tiles.scan_prefetch, num_warps=tiles.scan_warps,
    )
    scores = q.new_empty(T, H, BT, dtype=torch.float32)
    _scores_kernel()[tiles.grid(len(chunks), H, BT // BC)](
        q, q.stride(0), q.stride(1), k, k.stride(0), k.stride(1), gc, chunks, cu_seqlens, scores,
        HKV=Hkv, G=H // Hkv, K=K, BT=BT, BC=BC, HEADS_FIRST=tiles.heads_first, num_warps=tiles.scores_warps,
    )
    bv = min(tiles.output_bv, V)
    _output_kernel()[tiles.grid(len(chunks), H, triton.cdiv(V, bv))](
        q, q.stride(0), q.stride(1), v, v.stride(0), v.stride(1), gc, chunk_states, scores, chunks, cu_seqlens, o,
        scale, HKV=Hkv, G=H // Hkv, K=K, V=V, BT=BT, BV=bv, HEADS_FIRST=tiles.heads_first,
        num_warps=tiles.output_warps,
    )
    return o


@functools.cache
def _scan_kernel():
    import triton
    import triton.language as tl

    _define_helpers()

    # The prefills' slots start `num_decodes` int32 into the step's slot tensor: specialising on their alignment
    # would compile the kernel again while serving, for a step with 1 to 3 decodes before its prefills.
    @triton.jit(do_not_specialize_on_alignment=["state_indices", "has_initial_state"])
    def gla_chunk_scan_kernel(
        k, s_kt, s_kh, v, s_vt, s_vh, g, s_gt, s_gh, state, s_slot, s_head, s_key, s_value,
        state_indices, has_initial_state, cu_seqlens, first_chunk, chunk_states, gc,
        HKV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        PREFETCH: tl.constexpr,
    ):
        # Rows of the state are independent (the decay is diagonal in the key), so a program owns a [BK, BV] block.
        i_n, i_h, i_kv = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
        o_t = tl.arange(0, BT)
        o_k = i_k * BK + tl.arange(0, BK)
        o_v = i_v * BV + tl.arange(0, BV)
        bos, eos = tl.load(cu_seqlens + i_n).to(tl.int64), tl.load(cu_seqlens + i_n + 1).to(tl.int64)

        p_s = state + tl.load(state_indices + i_n).to(tl.int64) * s_slot + i_h * s_head + o_k[:, None] * s_key
        p_s += o_v[None, :] * s_value
        b_s = tl.where(tl.load(has_initial_state + i_n) != 0, tl.load(p_s), 0.0)  # a fresh slot may hold NaN
        p_h = chunk_states + (tl.load(first_chunk + i_n).to(tl.int64) * HKV + i_h) * K * V
        p_h += o_k[:, None] * V + o_v[None, :]
        p_k, p_g, p_v = k + i_h * s_kh + o_k[None, :], g + i_h * s_gh + o_k[None, :], v + i_h * s_vh + o_v[None, :]
        if PREFETCH:  # the next chunk's loads are issued before this chunk's arithmetic (they do not depend on S)
            n_k, n_g, n_v = load_chunk(p_k, s_kt, p_g, s_gt, p_v, s_vt, bos, eos, BT)
        for t0 in range(bos, eos, BT):
            tl.store(p_h, b_s)  # the state entering this chunk
            p_h += HKV * K * V
            rows = t0 + o_t
            m_t = (rows < eos)[:, None]
            if PREFETCH:
                b_k, b_g, b_v = n_k, n_g, n_v
                n_k, n_g, n_v = load_chunk(p_k, s_kt, p_g, s_gt, p_v, s_vt, t0 + BT, eos, BT)
            else:
                b_k, b_g, b_v = load_chunk(p_k, s_kt, p_g, s_gt, p_v, s_vt, t0, eos, BT)
            b_gc = tl.cumsum(b_g.to(tl.float64), axis=0)
            if i_v == 0:  # stored in gc's dtype: an fp32 copy of the fp64 sum is off by half an ulp at most
                tl.store(gc + (rows[:, None] * HKV + i_h) * K + o_k[None, :], b_gc.to(gc.dtype.element_ty), mask=m_t)
            b_gl = tl.sum(tl.where(o_t[:, None] == BT - 1, b_gc, 0.0), axis=0)  # gc of the last (or a tail) row
            b_kl = b_k * tl.exp((b_gl[None, :] - b_gc).to(tl.float32))  # k decayed to the end of the chunk
            b_s = b_s * tl.exp(b_gl.to(tl.float32))[:, None] + tl.dot(tl.trans(b_kl), b_v)
        tl.store(p_s, b_s)

    return gla_chunk_scan_kernel


chunk_head_block = chunk_bounds = load_chunk = None
"""Triton functions the kernels share, put here by `_define_helpers` (triton is imported lazily; the kernels reach
them as module globals, which both Triton's compiler and its interpreter resolve)."""


@functools.cache
def _define_helpers() -> None:
    global chunk_head_block, chunk_bounds, load_chunk
    import triton
    import triton.language as tl

    @triton.jit
    def load_chunk(p_k, s_kt, p_g, s_gt, p_v, s_vt, t0, eos, BT: tl.constexpr):
        # k, g, v of the chunk's rows t0 .. t0 + BT (zeros past the sequence's end), in fp32.
        rows = t0 + tl.arange(0, BT)
        m_t = (rows < eos)[:, None]
        b_k = tl.load(p_k + rows[:, None] * s_kt, mask=m_t, other=0.0).to(tl.float32)
        b_g = tl.load(p_g + rows[:, None] * s_gt, mask=m_t, other=0.0).to(tl.float32)
        b_v = tl.load(p_v + rows[:, None] * s_vt, mask=m_t, other=0.0).to(tl.float32)
        return b_k, b_g, b_v

    @triton.jit
    def chunk_head_block(BLOCKS: tl.constexpr, HEADS_FIRST: tl.constexpr):
        # (chunk, query head, block) of this program, for either grid of `Tiles.grid`.
        if HEADS_FIRST:
            return tl.program_id(1), tl.program_id(0) // BLOCKS, tl.program_id(0) % BLOCKS
        return tl.program_id(0), tl.program_id(1), tl.program_id(2)

    @triton.jit
    def chunk_bounds(chunks, cu_seqlens, i_c):
        # (first token of chunk i_c, end of its sequence) from the chunk table.
        t0 = tl.load(chunks + 2 * i_c + 1).to(tl.int64)
        return t0, tl.load(cu_seqlens + tl.load(chunks + 2 * i_c) + 1).to(tl.int64)


@functools.cache
def _scores_kernel():
    import triton
    import triton.language as tl

    _define_helpers()

    @triton.jit
    def gla_chunk_scores_kernel(
        q, s_qt, s_qh, k, s_kt, s_kh, gc, chunks, cu_seqlens, scores,
        HKV: tl.constexpr, G: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
        HEADS_FIRST: tl.constexpr,
    ):
        # Row block i_i (BC rows) of the chunk's causal scores A[i, j] = sum_k q_i k_j exp(gc_i - gc_j), j <= i.
        i_c, i_hq, i_i = chunk_head_block(BT // BC, HEADS_FIRST)
        i_h = i_hq // G
        o_c = tl.arange(0, BC)
        o_k = tl.arange(0, K)
        t0, eos = chunk_bounds(chunks, cu_seqlens, i_c)
        r0 = t0 + i_i * BC
        if r0 < eos:
            rows = r0 + o_c
            m_i = (rows < eos)[:, None]
            p_a = scores + (rows[:, None] * HKV * G + i_hq) * BT + o_c[None, :]
            p_k = k + i_h * s_kh + o_k
            p_gc = gc + i_h * K + o_k
            b_q = tl.load(q + rows[:, None] * s_qt + i_hq * s_qh + o_k[None, :], mask=m_i, other=0.0).to(tl.float32)
            b_gc = tl.load(p_gc + rows[:, None] * HKV * K, mask=m_i, other=0.0)
            b_gn = tl.load(p_gc + r0 * HKV * K)  # reference: gc of the block's first row
            b_qn = b_q * tl.exp((b_gc - b_gn[None, :]).to(tl.float32))
            for i_j in range(0, i_i):  # earlier row blocks of the chunk, all inside the sequence
                rows_j = t0 + i_j * BC + o_c
                b_kj = tl.load(p_k + rows_j[:, None] * s_kt).to(tl.float32)
                b_kj *= tl.exp((b_gn[None, :] - tl.load(p_gc + rows_j[:, None] * HKV * K)).to(tl.float32))
                tl.store(p_a + i_j * BC, tl.dot(b_qn, tl.trans(b_kj)), mask=m_i)
            b_a = tl.zeros([BC, BC], dtype=tl.float32)  # the diagonal block, one key row j at a time
            for j in range(0, tl.minimum(BC, eos - r0)):
                b_kr = tl.load(p_k + (r0 + j) * s_kt).to(tl.float32)
                b_gr = tl.load(p_gc + (r0 + j) * HKV * K)
                b_decay = tl.exp(tl.minimum(b_gc - b_gr[None, :], 0.0).to(tl.float32))  # rows i < j: masked below
                b_aj = tl.sum(b_q * b_kr[None, :] * b_decay, axis=1)
                b_a += tl.where(o_c[None, :] == j, b_aj[:, None], 0.0)
            tl.store(p_a + i_i * BC, tl.where(o_c[:, None] >= o_c[None, :], b_a, 0.0), mask=m_i)

    return gla_chunk_scores_kernel


@functools.cache
def _output_kernel():
    import triton
    import triton.language as tl

    _define_helpers()

    @triton.jit
    def gla_chunk_output_kernel(
        q, s_qt, s_qh, v, s_vt, s_vh, gc, chunk_states, scores, chunks, cu_seqlens, o, scale,
        HKV: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
        HEADS_FIRST: tl.constexpr,
    ):
        # o = (q exp(gc)) S_chunk + A v for one chunk, query head and value block; A's blocks above the diagonal
        # (never written) are masked out, as are rows past the sequence's end.
        i_c, i_hq, i_v = chunk_head_block(tl.cdiv(V, BV), HEADS_FIRST)
        i_h = i_hq // G
        o_t = tl.arange(0, BT)
        o_k = tl.arange(0, K)
        o_v = i_v * BV + tl.arange(0, BV)
        t0, eos = chunk_bounds(chunks, cu_seqlens, i_c)
        rows = t0 + o_t
        m_t = (rows < eos)[:, None]
        b_q = tl.load(q + rows[:, None] * s_qt + i_hq * s_qh + o_k[None, :], mask=m_t, other=0.0).to(tl.float32)
        b_gc = tl.load(gc + (rows[:, None] * HKV + i_h) * K + o_k[None, :], mask=m_t, other=0.0)
        b_h = tl.load(chunk_states + (i_c.to(tl.int64) * HKV + i_h) * K * V + o_k[:, None] * V + o_v[None, :])
        b_o = tl.dot(b_q * tl.exp(b_gc.to(tl.float32)), b_h)
        m_a = m_t & (o_t[:, None] >= o_t[None, :])
        b_a = tl.load(scores + (rows[:, None] * HKV * G + i_hq) * BT + o_t[None, :], mask=m_a, other=0.0)
        b_v = tl.load(v + rows[:, None] * s_vt + i_h * s_vh + o_v[None, :], mask=m_t, other=0.0).to(tl.float32)
        b_o = tl.dot(b_a, b_v, b_o)
        tl.store(o + (rows[:, None] * HKV * G + i_hq) * V + o_v[None, :], b_o * scale, mask=m_t)

    return gla_chunk_output_kernel
