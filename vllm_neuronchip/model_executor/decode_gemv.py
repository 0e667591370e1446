"""Unquantized linear layers on CUDA through `vllm::neuronchip_linear`: our one-kernel GEMV (`ops.gemv`) for a single
token, F.linear (cuBLAS) for anything else.

The choice is made inside the op, at run time, so torch.compile keeps one graph for every batch size and each CUDA
graph captures the path of its own size: batch-1 decode replays the GEMV. Installed after loading, only where vLLM
itself would run plain F.linear (CUDA, no batch-invariant mode, no FlashInfer linear backend), unless
NEURONCHIP_DECODE_GEMV=0.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from vllm import envs
from vllm.config import get_current_vllm_config_or_none
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.utils import default_unquantized_gemm, dispatch_unquantized_gemm
from vllm.platforms import current_platform
from vllm.utils.torch_utils import direct_register_custom_op

from vllm_neuronchip.ops.gemv import gemv, gemv_applies
from vllm_neuronchip.settings import get_settings


def _neuronchip_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return gemv(x, weight, bias) if gemv_applies(x, weight, bias) else F.linear(x, weight, bias)


def _neuronchip_linear_fake(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


direct_register_custom_op("neuronchip_linear", _neuronchip_linear, mutates_args=[], fake_impl=_neuronchip_linear_fake)


class DecodeGemvLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear, its matmul through `vllm::neuronchip_linear`."""

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ops.vllm.neuronchip_linear(x, layer.weight, bias)


def vllm_would_run_f_linear() -> bool:
    """On this platform and configuration vLLM's UnquantizedLinearMethod computes plain F.linear."""
    config = get_current_vllm_config_or_none()
    backend = config.kernel_config.linear_backend if config is not None else "auto"
    return (current_platform.is_cuda() and not envs.VLLM_BATCH_INVARIANT
            and dispatch_unquantized_gemm(backend) is default_unquantized_gemm)


def install_decode_gemv(model: nn.Module) -> int:
    """After loading: every linear layer of `model` with vLLM's unquantized method gets `DecodeGemvLinearMethod`
    where vLLM would run plain F.linear, unless NEURONCHIP_DECODE_GEMV=0. Returns how many layers it changed."""
    if not get_settings().decode_gemv or not vllm_would_run_f_linear():
        return 0
    layers = [m for m in model.modules()
              if isinstance(m, LinearBase) and type(m.quant_method) is UnquantizedLinearMethod]
    for layer in layers:
        layer.quant_method = DecodeGemvLinearMethod()
    return len(layers)


def linear_of(layer: nn.Module):
    """The matmul `layer` runs (F.linear or the op), for a weight computed beside its own (the GLA joint qkv+gate)."""
    return torch.ops.vllm.neuronchip_linear if isinstance(layer.quant_method, DecodeGemvLinearMethod) else F.linear
