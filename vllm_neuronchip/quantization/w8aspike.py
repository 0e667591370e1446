"""`--quantization w8aspike`: integer weight codes with group-128 scales, activations as spike counts.

Semantics per spec D5-D7: per-token `vth = mean|x| / k`, `s = round(x / vth)` (no clamp), codes
`round(W / σ)` (no clamp), `down_proj` left in float; execution path chosen by settings.
"""

import weakref
import zlib
from typing import Any, Optional

import torch
from vllm.config import get_current_vllm_config_or_none
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    UnquantizedLinearMethod,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import GroupQuantScaleParameter, ModelWeightParameter
from vllm.utils.torch_utils import direct_register_custom_op

from vllm_neuronchip.ops.w8aspike import w8aspike_linear
from vllm_neuronchip.quantization.checkpoint import COMPACT_SCALE, OVERFLOW_PARTS, RELEASED_SCALES, compact_codes
from vllm_neuronchip.quantization.reference import spike_counts, weight_codes
from vllm_neuronchip.quantization.spike_linear import EmulatedSpikeBackend, ExecutionPath, spike_linear
from vllm_neuronchip.quantization.spike_recorder import RECORDER
from vllm_neuronchip.quantization.weight_codes import WeightCodes
from vllm_neuronchip.settings import get_settings

logger = init_logger("vllm.neuronchip.w8aspike")

LAYOUTS = ("released", "compact")
_spike_backend = EmulatedSpikeBackend()


def set_spike_backend(backend) -> None:
    """Route the `spike` execution path to a spike device (the neuronchip platform calls this)."""
    global _spike_backend
    _spike_backend = backend


@register_quantization_config("w8aspike")
class W8ASpikeConfig(QuantizationConfig):
    def __init__(self, layout: str = "released", group_size: int = 128, k: float = 3.0, spike_down_proj: bool = False):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"w8aspike quantization_config 'format' must be one of {LAYOUTS}, got {layout!r}")
        if group_size != 128:
            raise ValueError(f"w8aspike uses weight groups of 128 input features, got group_size={group_size}")
        self.layout, self.group_size, self.k, self.spike_down_proj = layout, group_size, float(k), spike_down_proj

    def get_name(self) -> str:
        return "w8aspike"

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float32, torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "W8ASpikeConfig":
        return cls(
            layout=config.get("format", "released"), group_size=config.get("group_size", 128),
            k=config.get("k", 3.0), spike_down_proj=config.get("spike_down_proj", False),
        )

    def is_quantized(self, prefix: str) -> bool:
        """q/k/v/o, the full-rank gate, gate/up; not down_proj (spec D7) nor a low-rank gate."""
        if ".gk_proj." in f"{prefix}.":
            return prefix.endswith(".gk_proj")
        return self.spike_down_proj or not prefix.endswith(".down_proj")

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if not isinstance(layer, LinearBase):
            return None
        return W8ASpikeLinearMethod(self, prefix) if self.is_quantized(prefix) else UnquantizedLinearMethod()


@register_weight_loader_v2_supported_method
class W8ASpikeLinearMethod(LinearMethodBase):
    """Loads float weights (released layout) or exact int16 codes (compact layout, densified by the
    loader), keeps int8 codes + exact overflow and fp32 scales, and runs the configured execution path."""

    def __init__(self, config: W8ASpikeConfig, prefix: str):
        self.config, self.prefix = config, prefix
        self.dummy_weights = False

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        group = self.config.group_size
        if input_size_per_partition % group:
            raise ValueError(
                f"w8aspike needs input features per rank divisible by {group}, got {input_size_per_partition}"
            )
        config = get_current_vllm_config_or_none()
        self.dummy_weights = config is not None and str(config.load_config.load_format).lower() == "dummy"
        weight_loader = extra_weight_attrs["weight_loader"]
        out = sum(output_partition_sizes)
        stored = torch.float32 if self.config.layout == "released" else torch.int16
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(out, input_size_per_partition, dtype=stored),
            input_dim=1, output_dim=0, weight_loader=weight_loader,
        ))
        layer.register_parameter("weight_scale", GroupQuantScaleParameter(
            data=torch.empty(out, input_size_per_partition // group, dtype=torch.float32),
            input_dim=1, output_dim=0, weight_loader=weight_loader,
        ))

    def process_weights_after_loading(self, layer) -> None:
        """Exact codes -> int8 `weight` plus the overflow beyond ±127 (see weight_codes.py). Under
        `--load-format dummy` the codes and scales are synthetic (`synthetic_codes`) instead."""
        scales = layer.weight_scale.data
        if self.dummy_weights:
            exact, scales = synthetic_codes(layer.weight.shape, self.prefix, layer.weight.device)
        elif self.config.layout == "released":
            exact = weight_codes(layer.weight.data, scales)
        else:
            exact = layer.weight.data
        codes = WeightCodes.from_exact(exact)
        layer.weight = torch.nn.Parameter(codes.codes, requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(scales, requires_grad=False)
        for name in ("ell_cols", "ell_residual"):
            layer.register_buffer(f"weight_{name}", getattr(codes, name), persistent=False)
        layer.weight_ell_first_width = codes.first_width
        _LAYERS[layer.weight.data_ptr()] = layer

    @staticmethod
    def weight_codes_of(layer) -> WeightCodes:
        return WeightCodes(layer.weight, layer.weight_ell_cols, layer.weight_ell_residual, layer.weight_ell_first_width)

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Through the opaque `vllm::w8aspike_linear` op, so torch.compile leaves the Triton kernels,
        the settings lookup and the spike recorder alone. The op names its layer by the weight tensor, a
        graph input, not by a string: a string is a constant of the graph, which would make every layer's
        piece of the compiled model distinct, and vLLM compiles each distinct piece (the 7B on an H100: 70 s
        with the string, 43 s without)."""
        return torch.ops.vllm.w8aspike_linear(x, layer.weight, bias)

    def run(self, layer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The op's body: spike-quantize x, integer GEMM on the configured path, record spike statistics."""
        settings = get_settings()
        path = ExecutionPath(settings.w8aspike_path)
        rows, codes = x.reshape(-1, x.shape[-1]), self.weight_codes_of(layer)
        if path is ExecutionPath.INTEGER:  # Triton int8 GEMM on CUDA, exact torch group sums elsewhere
            y, s = w8aspike_linear(rows, self.config.k, codes, layer.weight_scale, bias, out_dtype=x.dtype)
        else:
            s, vth = spike_counts(rows, self.config.k)
            y = spike_linear(s, vth, codes, layer.weight_scale, bias, path=path, backend=_spike_backend)
        if settings.spike_stats:
            RECORDER.record(self.prefix, s, fan_out=codes.shape[0])
        return y.to(x.dtype).view(*x.shape[:-1], -1)


_LAYERS: "weakref.WeakValueDictionary[int, torch.nn.Module]" = weakref.WeakValueDictionary()
"""W8ASpike layers by the address of their int8 weight codes (registered when the codes are made, so a
reused address names its latest owner): the op takes the weight, not a module."""


def _w8aspike_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    layer = _LAYERS.get(weight.data_ptr())
    if layer is None:
        raise RuntimeError("w8aspike_linear: no W8ASpike layer holds this weight tensor; weights moved after "
                           "loading (e.g. CPU offloading) are not supported")
    return layer.quant_method.run(layer, x, bias)


def _w8aspike_linear_fake(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


direct_register_custom_op("w8aspike_linear", _w8aspike_linear, mutates_args=[], fake_impl=_w8aspike_linear_fake)


SYNTHETIC_CODE_STD = 49.3
"""Standard deviation of synthetic codes: round(N(0, 49.3)) puts ~1% beyond ±127, as in the real checkpoint."""
SYNTHETIC_SCALE = 1e-3


def synthetic_codes(shape, prefix: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stand-ins for dummy weights with the real checkpoint's statistics, made on `device`:
    exact codes round(N(0, 49.3)) int32 [out, in] (~1% beyond ±127) and positive scales 1e-3 · (1 + U[0, 0.1))
    fp32 [out, in/128]. vLLM's dummy loader fills only float tensors with tiny uniform values, which would make
    released codes round(W / σ) absurd and leave compact int16 codes uninitialised."""
    out, in_features = shape
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(prefix.encode()))
    codes = torch.randn(out, in_features, generator=generator, device=device).mul_(SYNTHETIC_CODE_STD).round_()
    scales = torch.rand(out, in_features // 128, generator=generator, device=device).mul_(0.1).add_(1)
    return codes.to(torch.int32), scales.mul_(SYNTHETIC_SCALE)


def loadable_tensors(weights, config: W8ASpikeConfig):
    """Checkpoint tensors -> the model's parameter tensors: released `weight_quantizer.scales`
    [out, G, 1] become `weight_scale` [out, G]; compact int8 codes + overflow COO become exact int16
    codes; `down_proj` scales are dropped unless down_proj is spiked (spec D7)."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        part = next((p for p in OVERFLOW_PARTS if name.endswith(p)), None)
        if name.endswith(RELEASED_SCALES):
            module = name.removesuffix(RELEASED_SCALES)
            if config.is_quantized(module):
                yield module + COMPACT_SCALE, tensor.squeeze(-1).float()
            else:
                logger.info_once("w8aspike: ignoring the stored scales of unquantized %s", module.rsplit(".", 1)[-1])
        elif config.layout == "compact" and (part or (name.endswith(".weight") and tensor.dtype == torch.int8)):
            module = name.removesuffix(part or ".weight")
            parts = pending.setdefault(module, {})
            parts[name] = tensor
            if len(parts) == 1 + len(OVERFLOW_PARTS):
                yield module + ".weight", compact_codes(pending.pop(module), module).to(torch.int16)
        else:
            yield name, tensor
    if pending:
        module, parts = next(iter(pending.items()))
        raise ValueError(f"compact w8aspike codes of {module!r} are incomplete: only {sorted(parts)} were found")
