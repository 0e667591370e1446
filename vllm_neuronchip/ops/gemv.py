"""One token's linear layer, y = x W^T + b, as a single Triton kernel, and its reference.

At batch 1 a linear layer only streams its weight. cuBLAS runs the 7B's decode shapes below that rate (o_proj and
qkv_proj at 2.2-2.3 TB/s on an H100) or as split-K (down_proj: a memset, the GEMM and a reduce, three kernels);
this kernel reads each weight row block once and writes y directly. triton is imported on first use.
"""

import dataclasses
import functools

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class Launch:
    """Launch settings: rows of W per program, columns per step, warps, pipeline stages. The defaults were within
    1% of the fastest of 32 settings on each of the 7B's down_proj, o_proj and qkv_proj+gate shapes on an H100
    (benchmarks/results/gpu/h100/session_2026-12-07_1940/gemv_bf16.json; `benchmarks/decode_gemv.py --sweep`)."""

    block_n: int = 8
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 4


def gemv_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `gemv` computes F.linear(x, weight, bias): one CUDA row of a float dtype, rows of W contiguous, a
    contiguous bias."""
    return (x.is_cuda and x.numel() == x.shape[-1] and x.dtype in DTYPES and weight.dtype == x.dtype
            and weight.dim() == 2 and weight.stride(1) == 1 and (bias is None or bias.stride(0) == 1))


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, launch: Launch = Launch()
         ) -> torch.Tensor:
    """x [..., K] holding one row, weight [N, K], bias [N] or None -> y [..., N] in x's dtype (fp32 sums)."""
    import triton

    N, K = weight.shape
    row = x.reshape(K).contiguous()
    y = x.new_empty(*x.shape[:-1], N)
    _gemv_kernel()[(triton.cdiv(N, launch.block_n),)](
        row, weight, bias if bias is not None else weight, y, N, K, weight.stride(0), HAS_BIAS=bias is not None,
        BN=launch.block_n, BK=launch.block_k, STAGES=launch.num_stages, num_warps=launch.num_warps,
    )
    return y


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x W^T + b summed in fp64, rounded once to `dtype` (x's by default)."""
    y = x.double() @ weight.double().T
    return (y if bias is None else y + bias.double()).to(dtype or x.dtype)


def share_of_error_bound(got: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         launch: Launch = Launch()) -> float:
    """The largest |got - y| over the bound a correct `gemv` keeps to (1 or less: within it), y the exact x W^T + b.
    The bound is one rounding of y to x's dtype, eps |y|, plus the worst case of the fp32 sum, eps_fp32 n sum(|terms|),
    where n counts the roundings a term passes: its product, the K / BK steps of its column slot, the sum over at
    most BK slots, the bias."""
    exact = gemv_reference(x, weight, bias, dtype=torch.float64)
    terms = x.double().abs() @ weight.double().abs().T + (0 if bias is None else bias.double().abs())
    roundings = -(-weight.shape[1] // launch.block_k) + launch.block_k + 2
    bound = torch.finfo(x.dtype).eps * exact.abs() + torch.finfo(torch.float32).eps * roundings * terms
    return ((got.double() - exact).abs() / bound.clamp_min(torch.finfo(torch.float64).tiny)).max().item()


@functools.cache
def _gemv_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_kernel(x, w, b, y, N, K, s_wn, HAS_BIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    STAGES: tl.constexpr):
        # One program per BN rows of W: fp32 products accumulated per column slot, summed across slots at the end.
        rows = tl.program_id(0) * BN + tl.arange(0, BN)
        m_n = rows < N
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        for k0 in tl.range(0, K, BK, num_stages=STAGES):
            cols = k0 + tl.arange(0, BK)
            m_k = cols < K
            b_w = tl.load(w + rows[:, None].to(tl.int64) * s_wn + cols[None, :],
                          mask=m_n[:, None] & m_k[None, :], other=0.0)
            b_x = tl.load(x + cols, mask=m_k, other=0.0)
            acc += b_w.to(tl.float32) * b_x.to(tl.float32)[None, :]
        out = tl.sum(acc, axis=1)
        if HAS_BIAS:
            out += tl.load(b + rows, mask=m_n, other=0.0).to(tl.float32)
        tl.store(y + rows, out.to(y.dtype.element_ty), mask=m_n)

    return gemv_kernel
