"""GPU path of a W8ASpike linear: a Triton spike quantizer and a Triton int8 GEMM with one scale per 128-wide K tile.
Spike counts past ±127 are handled in the GEMM, codes past ±127 by a sparse fp64 correction; no host sync."""

import functools

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
    """`naive.w8aspike_matmul` -> y fp32 [M, N], with no host synchronisation (CUDA-graph safe).

    Per 128-wide K tile g: acc = s8 · c8ᵀ as an int8 dot (int32 sums, exact) with s8 = clamp(s, ±127); where
    the tile holds spike counts beyond ±127, plus (s - s8) · c8ᵀ as an IEEE fp32 dot, exact because every
    partial sum stays below 2^24 (`check_exact_fp32_residual`); out += σ[:, g] · acc. Codes beyond ±127 come
    in as a sparse correction (`weight_overflow_correction`); y = vth · out + b."""
    import triton

    M, K = s.shape
    N, G = weight.codes.shape[0], K // GROUP_SIZE
    if K % GROUP_SIZE or weight.codes.shape[1] != K or scales.shape[:2] != (N, G):
        raise ValueError(f"s {tuple(s.shape)}, codes {tuple(weight.codes.shape)} and scales "
                         f"{tuple(scales.shape)} do not fit groups of {GROUP_SIZE}")
    correction = weight_overflow_correction(s, weight, scales)
    y = torch.empty(M, N, dtype=torch.float32, device=s.device)
    BM, BN = (16 if M <= 16 else 64), 64
    _gemm_kernel()[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
        s.contiguous(), weight.codes.contiguous(), scales.reshape(N, G).contiguous(), vth.contiguous(),
        bias.contiguous() if bias is not None else y, correction if correction is not None else y, y, M, N,
        K=K, G=G, LIMIT=INT8_LIMIT, HAS_BIAS=bias is not None, HAS_CORRECTION=correction is not None,
        BM=BM, BN=BN, BK=GROUP_SIZE,
    )
    return y


def check_exact_fp32_residual(k: float, in_features: int) -> None:
    """Σ_i |s_i| over a row is at most k·K + K/2 (s = round(x / vth), vth = mean|x| / k), so a residual dot
    (s - s8) · c8 has partial sums below 127 · (k·K + K/2); fp32 holds them exactly below 2^24."""
    bound = INT8_LIMIT * (k * in_features + in_features / 2)
    if bound >= 2**24:
        raise ValueError(f"k={k} with {in_features} input features could exceed fp32's exact integers "
                         f"in the residual dot ({bound:.3g} >= 2^24)")


def weight_overflow_correction(s: torch.Tensor, weight: WeightCodes, scales: torch.Tensor) -> torch.Tensor | None:
    """Σ over the codes beyond ±127 (c = c8 + r, ~1%): s[:, i] · r · σ[n, g(i)] added to column n, fp32 [M, N]
    (None when there are none). fp64 products, exact; index_add needs no host synchronisation."""
    if weight.overflow_rows.numel() == 0:
        return None
    N, K = weight.codes.shape
    rows, cols = weight.overflow_rows, weight.overflow_cols
    sigma = scales.reshape(N, K // GROUP_SIZE).double()[rows, cols // GROUP_SIZE]
    terms = s[:, cols].double() * (weight.overflow_residual.double() * sigma)  # [M, overflow entries]
    correction = torch.zeros(s.shape[0], N, dtype=torch.float64, device=s.device).index_add_(1, rows, terms)
    return correction.float()


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
        s, codes, scales, vth, bias, correction, y, M, N,
        K: tl.constexpr, G: tl.constexpr, LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CORRECTION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        # One program per [BM, BN] tile of y; its K loop walks the G scale groups, one 128-wide tile each.
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        ks = tl.arange(0, BK)
        m_rows, m_cols = rows < M, cols < N
        p_s = s + rows.to(tl.int64)[:, None] * K + ks[None, :]  # [BM, BK]
        p_codes = codes + cols.to(tl.int64)[None, :] * K + ks[:, None]  # [BK, BN], K-major
        out = tl.zeros([BM, BN], dtype=tl.float32)
        for g in range(G):
            a = tl.load(p_s + g * BK, mask=m_rows[:, None], other=0)
            a8 = tl.minimum(tl.maximum(a, -LIMIT), LIMIT)
            b = tl.load(p_codes + g * BK, mask=m_cols[None, :], other=0)
            acc = tl.dot(a8.to(tl.int8), b, out_dtype=tl.int32).to(tl.float32)  # exact: |acc| <= 128 * 127 * 127
            residual = a - a8
            if tl.max(tl.abs(residual)) > 0:  # spike counts beyond ±127 in this tile: exact fp32 dot
                acc += tl.dot(residual.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            sigma = tl.load(scales + cols * G + g, mask=m_cols, other=0.0)
            out += acc * sigma[None, :]
        mask = m_rows[:, None] & m_cols[None, :]
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        if HAS_CORRECTION:
            out += tl.load(correction + offsets, mask=mask, other=0.0)
        out = tl.load(vth + rows, mask=m_rows, other=0.0)[:, None] * out
        if HAS_BIAS:
            out += tl.load(bias + cols, mask=m_cols, other=0.0).to(tl.float32)[None, :]
        tl.store(y + offsets, out, mask=mask)

    return w8aspike_gemm_kernel
