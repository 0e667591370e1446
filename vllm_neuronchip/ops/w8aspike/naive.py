"""Reference W8ASpike linear in plain torch (spec D6, §7.5): spike counts, then exact integer group sums.
What the Triton kernels are tested against; runs on CPU (CUDA torch has no integer matmul)."""

import torch

from vllm_neuronchip.quantization.reference import DEFAULT_K, spike_counts
from vllm_neuronchip.quantization.weight_codes import WeightCodes


def spike_quantize(x: torch.Tensor, k: float = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of x [M, K]: vth = clamp(mean|x| / k, 1e-5, 1e4) and s = round(x / vth) (half to even,
    no clamp), both in fp32 -> (s int32 [M, K], vth fp32 [M, 1]). Exactly `spike_counts`."""
    return spike_counts(x, k)


def w8aspike_matmul(
    s: torch.Tensor, vth: torch.Tensor, weight: WeightCodes, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = vth · Σ_g σ_g · acc_g + b, fp32 [M, N]: acc [M, N, G] are the exact int32 group sums of
    s [M, K] against the exact codes [N, K]; the combine over groups is fp64, then vth in fp32."""
    return combine_group_sums(weight.accumulate(s), vth, scales, bias)


def combine_group_sums(
    acc: torch.Tensor, vth: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact integer group sums acc [M, N, G] -> y = vth · Σ_g σ_g · acc_g + b, fp32 [M, N] (fp64 combine)."""
    y = vth * (acc.double() * scales.double()).sum(-1).float()
    return y if bias is None else y + bias.float()
