"""W8ASpike linear (spec D6, §7.5): spike-quantize each row of x, then y = vth · Σ_g σ_g (s · c)_g + b.
CUDA tensors go to `triton_kernels` (Triton quantizer + int8 GEMM), others to `naive` (plain torch reference)."""

import torch

from vllm_neuronchip.ops.w8aspike import naive, triton_kernels
from vllm_neuronchip.quantization.weight_codes import WeightCodes


def w8aspike_linear(
    x: torch.Tensor, k: float, weight: WeightCodes, scales: torch.Tensor, bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (any float dtype), codes [N, K], scales σ fp32 [N, K/128], bias [N] or None
    -> (y [..., N] in out_dtype, rounded once from fp32; spike counts s int32 [..., K] for spike statistics)."""
    rows = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        triton_kernels.check_exact_fp32_residual(k, rows.shape[-1])
        s, vth = triton_kernels.spike_quantize(rows, k)
        y = triton_kernels.w8aspike_matmul(s, vth, weight, scales, bias, out_dtype=out_dtype)
    else:
        s, vth = naive.spike_quantize(rows, k)
        y = naive.w8aspike_matmul(s, vth, weight, scales, bias).to(out_dtype)
    return y.view(*x.shape[:-1], -1), s.view(x.shape)


__all__ = ["naive", "triton_kernels", "w8aspike_linear"]
