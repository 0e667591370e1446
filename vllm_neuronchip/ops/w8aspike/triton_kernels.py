"""GPU path of a W8ASpike linear: a Triton spike quantizer and a Triton int8 GEMM with one scale per 128-wide K tile.
Values past ±127 (activations, codes) go through torch corrections in fp64; triton is imported on first use."""

import functools

import torch

from vllm_neuronchip.quantization.reference import DEFAULT_K, GROUP_SIZE, VTH_MAX, VTH_MIN
from vllm_neuronchip.quantization.weight_codes import INT8_LIMIT, WeightCodes

QUANTIZE_BLOCK = 2048
"""Features per step of the quantizer's loops over a row."""


def spike_quantize(x: torch.Tensor, k: float = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`naive.spike_quantize` in one program per row of x [M, K] (any float dtype) -> (s int32 [M, K],
    vth fp32 [M, 1], s8 = clamp(s, ±127) int8 [M, K]). Same fp32 operations; the sum of |x| may be
    ordered differently, so vth can differ from torch's in the last bits where that sum rounds."""
    import triton

    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    s = torch.empty(M, K, dtype=torch.int32, device=x.device)
    s8 = torch.empty(M, K, dtype=torch.int8, device=x.device)
    vth = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    _quantize_kernel()[(M,)](
        x, x.stride(0), s, s8, vth, float(k),
        K=K, BLOCK=min(triton.next_power_of_2(K), QUANTIZE_BLOCK),
        VTH_MIN=VTH_MIN, VTH_MAX=VTH_MAX, LIMIT=INT8_LIMIT,
    )
    return s, vth, s8


def w8aspike_matmul(
    s8: torch.Tensor,
    s: torch.Tensor,
    vth: torch.Tensor,
    weight: WeightCodes,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`naive.w8aspike_matmul` -> y fp32 [M, N]. Per 128-wide K tile g: acc = s8 · c8ᵀ (int8 dot, int32 sums,
    exact), out += σ[:, g] · acc in fp32; then the corrections for what int8 left out, and y = vth · out + b."""
    import triton

    M, K = s8.shape
    N, G = weight.codes.shape[0], K // GROUP_SIZE
    if K % GROUP_SIZE or weight.codes.shape[1] != K or scales.shape[:2] != (N, G):
        raise ValueError(f"s8 {tuple(s8.shape)}, codes {tuple(weight.codes.shape)} and scales "
                         f"{tuple(scales.shape)} do not fit groups of {GROUP_SIZE}")
    correction = overflow_correction(s8, s, weight, scales)
    y = torch.empty(M, N, dtype=torch.float32, device=s8.device)
    BM, BN = (16 if M <= 16 else 64), 64
    _gemm_kernel()[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
        s8.contiguous(), weight.codes.contiguous(), scales.reshape(N, G).contiguous(), vth.contiguous(),
        bias.contiguous() if bias is not None else y, correction if correction is not None else y, y, M, N,
        K=K, G=G, HAS_BIAS=bias is not None, HAS_CORRECTION=correction is not None, BM=BM, BN=BN, BK=GROUP_SIZE,
    )
    return y


def overflow_correction(
    s8: torch.Tensor, s: torch.Tensor, weight: WeightCodes, scales: torch.Tensor
) -> torch.Tensor | None:
    """What the int8 GEMM misses, Σ_g σ_g · (Σ_{i∈g} s_i c_i - Σ_{i∈g} s8_i c8_i), fp32 [M, N] (None if 0):
    (a) residual activations r = s - s8 against the int8 codes, as a dense GEMM over the C columns that have
    any (M·C·N: few outlier channels in real activations); (b) all activations against the weight overflow
    (sparse COO, ~1% of the codes) as a sparse GEMM.
    fp64 throughout: c·σ, and each product with an activation, is exact; only the sums round.
    Finding the columns of (a) reads back to the host (not CUDA-graph capturable)."""
    N, K = weight.codes.shape
    sigma = scales.reshape(N, K // GROUP_SIZE).double()
    correction = None
    residual = s - s8
    columns = (residual != 0).any(0).nonzero().squeeze(1)
    if columns.numel():
        codes = weight.codes[:, columns].double() * sigma[:, columns // GROUP_SIZE]  # [N, C]
        correction = residual[:, columns].double() @ codes.t()
    if weight.overflow_rows.numel():
        rows, cols = weight.overflow_rows, weight.overflow_cols
        values = weight.overflow_residual.double() * sigma[rows, cols // GROUP_SIZE]
        overflow = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, (N, K), is_coalesced=True, check_invariants=False
        )  # WeightCodes.from_exact lists them in row-major order, each once
        term = torch.sparse.mm(overflow, s.double().t()).t()  # [M, N]
        correction = term if correction is None else correction + term
    return None if correction is None else correction.float().contiguous()


@functools.cache
def _quantize_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def spike_quantize_kernel(
        x, stride_x, s, s8, vth, k,
        K: tl.constexpr, BLOCK: tl.constexpr, VTH_MIN: tl.constexpr, VTH_MAX: tl.constexpr, LIMIT: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_row, s_row, s8_row = x + row * stride_x, s + row * K, s8 + row * K
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
            q = r.to(tl.int32)
            tl.store(s_row + cols, q, mask=cols < K)
            tl.store(s8_row + cols, tl.minimum(tl.maximum(q, -LIMIT), LIMIT).to(tl.int8), mask=cols < K)

    return spike_quantize_kernel


@functools.cache
def _gemm_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def w8aspike_gemm_kernel(
        s8, codes, scales, vth, bias, correction, y, M, N,
        K: tl.constexpr, G: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CORRECTION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        # One program per [BM, BN] tile of y; its K loop walks the G scale groups, one 128-wide tile each.
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        ks = tl.arange(0, BK)
        m_rows, m_cols = rows < M, cols < N
        p_s8 = s8 + rows.to(tl.int64)[:, None] * K + ks[None, :]  # [BM, BK]
        p_codes = codes + cols.to(tl.int64)[None, :] * K + ks[:, None]  # [BK, BN], K-major
        out = tl.zeros([BM, BN], dtype=tl.float32)
        for g in range(G):
            a = tl.load(p_s8 + g * BK, mask=m_rows[:, None], other=0)
            b = tl.load(p_codes + g * BK, mask=m_cols[None, :], other=0)
            acc = tl.dot(a, b, out_dtype=tl.int32)  # exact: |acc| <= 128 * 127 * 127
            sigma = tl.load(scales + cols * G + g, mask=m_cols, other=0.0)
            out += acc.to(tl.float32) * sigma[None, :]
        mask = m_rows[:, None] & m_cols[None, :]
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        if HAS_CORRECTION:
            out += tl.load(correction + offsets, mask=mask, other=0.0)
        out = tl.load(vth + rows, mask=m_rows, other=0.0)[:, None] * out
        if HAS_BIAS:
            out += tl.load(bias + cols, mask=m_cols, other=0.0).to(tl.float32)[None, :]
        tl.store(y + offsets, out, mask=mask)

    return w8aspike_gemm_kernel
