"""GPU path of a W8ASpike linear: a Triton spike quantizer and a Triton int8 GEMM with one scale per 128-wide K tile.
Spike counts past ±127 and codes past ±127 (padded per-row ELL pieces) are both handled inside the GEMM."""

import functools
from dataclasses import dataclass

import torch

from vllm_neuronchip.quantization.reference import DEFAULT_K, GROUP_SIZE, VTH_MAX, VTH_MIN
from vllm_neuronchip.quantization.weight_codes import INT8_LIMIT, WeightCodes

QUANTIZE_BLOCK = 2048
"""Features per step of the quantizer's loops over a row."""


def spike_quantize(x: torch.Tensor, k: float = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """`naive.spike_quantize` in one program per row of x [M, K] (any float dtype) -> (s int32 [M, K],
    vth fp32 [M, 1]). Same fp32 operations; the sum of |x| may be
    ordered differently, so vth can differ from torch's in the last bits where that sum rounds."""
    import triton

    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    s = torch.empty(M, K, dtype=torch.int32, device=x.device)
    vth = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    _quantize_kernel()[(M,)](
        x, x.stride(0), s, vth, float(k),
        K=K, BLOCK=min(triton.next_power_of_2(K), QUANTIZE_BLOCK), VTH_MIN=VTH_MIN, VTH_MAX=VTH_MAX,
    )
    return s, vth


def w8aspike_matmul(
    s: torch.Tensor,
    vth: torch.Tensor,
    weight: WeightCodes,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`naive.w8aspike_matmul` -> y fp32 [M, N], with no host synchronisation and shapes fixed by M, N, K and
    the ELL width (CUDA-graph safe).

    Per 128-wide K tile g: acc = s8 · c8ᵀ as an int8 dot (int32 sums, exact) with s8 = clamp(s, ±127); where
    the tile holds spike counts beyond ±127, plus (s - s8) · c8ᵀ as an IEEE fp32 dot, exact because every
    partial sum stays below 2^24 (`check_exact_fp32_residual`); out += σ[:, g] · acc. Codes beyond ±127 come
    from the ELL pieces of each output row n in the same program: out += Σ_w (s[:, col] · r) · σ[n, col // 128]
    in fp32, where s · r is an exact integer (|r| <= 127, the same 2^24 bound) and only the multiplication by σ
    and the sums round, like the combine over groups. y = vth · out + b.

    Grid (M / BM, N / BN, S): with few output tiles (decode) the groups are split S ways so the grid fills
    the GPU; each split also takes 1/S of the ELL columns, writes fp32 partials [S, M, N], and a second
    kernel sums them in split order (deterministic) and applies vth and the bias."""
    import triton

    M, K = s.shape
    N, G = weight.codes.shape[0], K // GROUP_SIZE
    if K % GROUP_SIZE or weight.codes.shape[1] != K or scales.shape[:2] != (N, G):
        raise ValueError(f"s {tuple(s.shape)}, codes {tuple(weight.codes.shape)} and scales "
                         f"{tuple(scales.shape)} do not fit groups of {GROUP_SIZE}")
    if weight.ell_cols.shape != weight.ell_residual.shape or weight.ell_cols.shape[0] != N:
        raise ValueError(f"ELL columns {tuple(weight.ell_cols.shape)} and pieces "
                         f"{tuple(weight.ell_residual.shape)} must both be [{N}, W]")
    W = weight.ell_cols.shape[1]
    plan = gemm_plan(M, N, G, W, _sm_count(s.device))
    y = torch.empty(M, N, dtype=torch.float32, device=s.device)
    out = y if plan.splits == 1 else torch.empty(plan.splits, M, N, dtype=torch.float32, device=s.device)
    s, vth = s.contiguous(), vth.contiguous()
    bias = bias.contiguous() if bias is not None else None
    _gemm_kernel()[(triton.cdiv(M, plan.bm), triton.cdiv(N, plan.bn), plan.splits)](
        s, weight.codes.contiguous(), scales.reshape(N, G).contiguous(), vth, bias if bias is not None else y,
        weight.ell_cols.contiguous(), weight.ell_residual.contiguous(), out,
        M, N, W, plan.groups_per_split, plan.ell_per_split,
        K=K, G=G, LIMIT=INT8_LIMIT, HAS_BIAS=bias is not None, HAS_ELL=W > 0, SPLIT=plan.splits > 1,
        BM=plan.bm, BN=plan.bn, BK=GROUP_SIZE, WB=plan.ell_block,
    )
    if plan.splits > 1:
        _reduce_kernel()[(M, triton.cdiv(N, REDUCE_BLOCK))](
            out, vth, bias if bias is not None else y, y, M, N, plan.splits,
            HAS_BIAS=bias is not None, BLOCK=REDUCE_BLOCK,
        )
    return y


REDUCE_BLOCK = 256
"""Outputs per program of the split-K reduction."""

DEFAULT_SM_COUNT = 132
"""SMs assumed off CUDA (the interpreter): an H100 SXM."""


@dataclass(frozen=True)
class GemmPlan:
    bm: int  # rows of s per program
    bn: int  # output features per program
    splits: int  # S: programs along K for one output tile
    groups_per_split: int  # 128-wide K groups per split (the last split may have fewer)
    ell_per_split: int  # ELL columns per split
    ell_block: int  # ELL columns per step of a program's ELL loop


def gemm_plan(M: int, N: int, G: int, W: int, sm_count: int = DEFAULT_SM_COUNT) -> GemmPlan:
    """Tile sizes and split-K from the shapes alone (no autotuning, no host sync). Small N gets narrower
    tiles; when the [M, N] tiles are fewer than 2 programs per SM, the G groups are split into S parts of
    G // ceil(2·SMs / tiles) groups (at least one), so the grid has at least 2·SMs programs while G allows.
    The 7B at M <= 16 on 132 SMs: qkv (N 4608, K 3584) S=4, o S=6, gk (N 512) S=28, down (K 18944) S=6,
    gate_up (N 37888) S=1."""
    bm = 16 if M <= 16 else 64
    bn = 32 if N <= 1024 else 64
    tiles = -(-M // bm) * -(-N // bn)
    wanted = -(-2 * sm_count // tiles)
    groups_per_split = G if wanted <= 1 else max(1, G // wanted)
    splits = -(-G // groups_per_split)
    ell_block = min(16, 8192 // (bm * bn))  # keeps the [BM, BN, WB] gather of spike counts at 8192 values
    return GemmPlan(bm, bn, splits, groups_per_split, -(-W // splits) if W else 0, ell_block)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return DEFAULT_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_exact_fp32_residual(k: float, in_features: int) -> None:
    """Σ_i |s_i| over a row is at most k·K + K/2 (s = round(x / vth), vth = mean|x| / k), so a residual dot
    (s - s8) · c8 has partial sums below 127 · (k·K + K/2), and so has any single product s_i · r of a spike
    count and an ELL piece (|r| <= 127); fp32 holds them exactly below 2^24."""
    bound = INT8_LIMIT * (k * in_features + in_features / 2)
    if bound >= 2**24:
        raise ValueError(f"k={k} with {in_features} input features could exceed fp32's exact integers "
                         f"in the residual dot ({bound:.3g} >= 2^24)")


@functools.cache
def _quantize_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def spike_quantize_kernel(
        x, stride_x, s, vth, k,
        K: tl.constexpr, BLOCK: tl.constexpr, VTH_MIN: tl.constexpr, VTH_MAX: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_row, s_row = x + row * stride_x, s + row * K
        total = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            total += tl.abs(tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32))
        # Correctly rounded divisions (a plain fp32 `/` may lower to an approximate one on GPU).
        mean = tl.math.div_rn(tl.sum(total, axis=0), K * 1.0)
        v = tl.minimum(tl.maximum(tl.math.div_rn(mean, k), VTH_MIN), VTH_MAX)
        tl.store(vth + row, v)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            y = tl.math.div_rn(tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32), v)
            # Round half to even (the interpreter has no libdevice rint): floor(y + 0.5), and where y + 0.5
            # is an integer (a tie, or y just below 0.5 rounded up to 1) an odd result steps down by one.
            t = y + 0.5
            r = tl.floor(t)
            r = tl.where((t == r) & ((r.to(tl.int32) & 1) != 0), r - 1.0, r)
            r = tl.where(tl.abs(y) < 8388608.0, r, y)  # |y| >= 2^23 is already an integer
            tl.store(s_row + cols, r.to(tl.int32), mask=cols < K)

    return spike_quantize_kernel


@functools.cache
def _gemm_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def w8aspike_gemm_kernel(
        s, codes, scales, vth, bias, ell_cols, ell_residual, out, M, N, W, groups_per_split, ell_per_split,
        K: tl.constexpr, G: tl.constexpr, LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ELL: tl.constexpr,
        SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, WB: tl.constexpr,
    ):
        # One program per [BM, BN] tile of y and split of K; its K loop walks its scale groups, one 128-wide tile
        # each, then its share of the ELL columns of its BN output rows.
        split = tl.program_id(2)
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        ks = tl.arange(0, BK)
        m_rows, m_cols = rows < M, cols < N
        s_rows = s + rows.to(tl.int64)[:, None] * K
        p_s = s_rows + ks[None, :]  # [BM, BK]
        p_codes = codes + cols.to(tl.int64)[None, :] * K + ks[:, None]  # [BK, BN], K-major
        out_tile = tl.zeros([BM, BN], dtype=tl.float32)
        g_start = split * groups_per_split
        for g in range(g_start, tl.minimum(g_start + groups_per_split, G)):
            a = tl.load(p_s + g * BK, mask=m_rows[:, None], other=0)
            a8 = tl.minimum(tl.maximum(a, -LIMIT), LIMIT)
            b = tl.load(p_codes + g * BK, mask=m_cols[None, :], other=0)
            acc = tl.dot(a8.to(tl.int8), b, out_dtype=tl.int32).to(tl.float32)  # exact: |acc| <= 128 * 127 * 127
            residual = a - a8
            if tl.max(tl.abs(residual)) > 0:  # spike counts beyond ±127 in this tile: exact fp32 dot
                acc += tl.dot(residual.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            sigma = tl.load(scales + cols * G + g, mask=m_cols, other=0.0)
            out_tile += acc * sigma[None, :]
        if HAS_ELL:
            # Codes beyond ±127: pieces r (|r| <= 127) at columns j of each output row n; s[:, j] · r is an exact
            # fp32 integer (< 2^24), then times σ[n, j // 128]. Padding is (column 0, piece 0).
            w_start = split * ell_per_split
            w_end = tl.minimum(w_start + ell_per_split, W)
            p_ell = cols.to(tl.int64)[:, None] * W  # [BN, 1]
            for w0 in range(w_start, w_end, WB):
                ws = w0 + tl.arange(0, WB)
                m_ell = m_cols[:, None] & (ws < w_end)[None, :]  # [BN, WB]
                j = tl.load(ell_cols + p_ell + ws[None, :], mask=m_ell, other=0).to(tl.int32)
                r = tl.load(ell_residual + p_ell + ws[None, :], mask=m_ell, other=0).to(tl.float32)
                sigma = tl.load(scales + cols[:, None] * G + j // BK, mask=m_ell, other=0.0)
                spikes = tl.load(s_rows[:, :, None] + j[None, :, :], mask=m_rows[:, None, None] & m_ell[None, :, :],
                                 other=0).to(tl.float32)  # [BM, BN, WB]
                out_tile += tl.sum(spikes * r[None, :, :] * sigma[None, :, :], axis=2)
        mask = m_rows[:, None] & m_cols[None, :]
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        if SPLIT:
            tl.store(out + split.to(tl.int64) * M * N + offsets, out_tile, mask=mask)
        else:
            out_tile = tl.load(vth + rows, mask=m_rows, other=0.0)[:, None] * out_tile
            if HAS_BIAS:
                out_tile += tl.load(bias + cols, mask=m_cols, other=0.0).to(tl.float32)[None, :]
            tl.store(out + offsets, out_tile, mask=mask)

    return w8aspike_gemm_kernel


@functools.cache
def _reduce_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def split_k_reduce_kernel(partials, vth, bias, y, M, N, splits, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        # y[m, n] = vth[m] · Σ_split partials[split, m, n] + b[n], summed in split order: deterministic.
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m_cols = cols < N
        total = tl.zeros([BLOCK], dtype=tl.float32)
        for split in range(splits):
            total += tl.load(partials + (split * M + row) * N + cols, mask=m_cols, other=0.0)
        total = tl.load(vth + row) * total
        if HAS_BIAS:
            total += tl.load(bias + cols, mask=m_cols, other=0.0).to(tl.float32)
        tl.store(y + row * N + cols, total, mask=m_cols)

    return split_k_reduce_kernel
