"""The three execution paths of a W8ASpike linear layer, behind one function (spec §7.5, D6).

reference: dequantize and run a float GEMM (the original fake-quant behaviour); integer: grouped
integer dot products, exact, then `vth * Σ_g σ_g acc_g`; spike: the integer accumulations come from
a pluggable spike backend fed with spike trains. integer and spike agree bit for bit.
"""

from enum import Enum
from typing import Protocol

import torch

from vllm_neuronchip.ops.spike.codecs import Encoding, spike_quant
from vllm_neuronchip.ops.w8aspike.naive import combine_group_sums, w8aspike_matmul
from vllm_neuronchip.quantization.weight_codes import WeightCodes


class ExecutionPath(str, Enum):
    REFERENCE = "reference"
    INTEGER = "integer"
    SPIKE = "spike"


class SpikeBackend(Protocol):
    """What a spike device implements: integer accumulations of spike counts against weight codes."""

    def accumulate(self, spike_counts: torch.Tensor, codes: WeightCodes) -> torch.Tensor:
        """spike_counts [rows, in] integer-valued, codes [out, in] -> acc [rows, out, groups] integer, exact."""
        ...


class EmulatedSpikeBackend:
    """Feeds bitwise sign-magnitude spike trains (W8ASpike's encoding) one time step at a time:
    acc = Σ_t 2^(T-1-t) (spikes_t · codes). A reference for real spike devices."""

    def accumulate(self, spike_counts: torch.Tensor, codes: WeightCodes) -> torch.Tensor:
        train = spike_quant(spike_counts, Encoding.BITWISE_BIDIRECTIONAL)
        steps = train.spikes.shape[0]
        acc = sum(codes.accumulate(train.spikes[t]).long() << (steps - 1 - t) for t in range(steps))
        # x_zero is nonzero only for all-non-negative inputs: the train decodes to s + x_zero.
        return acc - codes.accumulate(train.x_zero).long()


def spike_linear(
    spike_counts: torch.Tensor,
    vth: torch.Tensor,
    codes: WeightCodes,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    path: ExecutionPath,
    backend: SpikeBackend | None = None,
) -> torch.Tensor:
    """y = vth · Σ_g σ_g (Σ_{i∈g} s_i c_i) + b in fp32. spike_counts [rows, in], vth [rows, 1],
    codes [out, in], scales σ [out, in / 128]."""
    if path is ExecutionPath.REFERENCE:
        exact = codes.exact()
        weight = (exact.float().view(*scales.shape, -1) * scales[..., None]).view_as(exact)
        y = (spike_counts.float() * vth) @ weight.t()
        return y if bias is None else y + bias.float()
    if path is ExecutionPath.SPIKE:
        return combine_group_sums(backend.accumulate(spike_counts, codes), vth, scales, bias)
    return w8aspike_matmul(spike_counts, vth, codes, scales, bias)
