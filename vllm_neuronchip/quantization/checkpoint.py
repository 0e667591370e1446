"""The two W8ASpike checkpoint layouts (released: float weights + `weight_quantizer.scales`, spec §2.2;
compact: int8 codes + exact overflow COO + `weight_scale`): expected tensors, conversion, tiny writers."""

import copy
from pathlib import Path

import torch

from vllm_neuronchip.model_executor.checkpoint import expected_tensor_shapes
from vllm_neuronchip.model_executor.config import SWA_LAYER, GLAswaConfig
from vllm_neuronchip.quantization.reference import DEFAULT_K, GROUP_SIZE, is_spiked, weight_codes
from vllm_neuronchip.tiny_checkpoint import TinySpec, random_tensors, write_model_files, write_weights

LAYOUTS = ("released", "compact")
RELEASED_SCALES = ".weight_quantizer.scales"  # [out, in/128, 1], every QuantLinear (down_proj included)
COMPACT_SCALE = ".weight_scale"  # [out, in/128], spiked linears only
OVERFLOW_PARTS = (".weight_overflow_rows", ".weight_overflow_cols", ".weight_overflow_codes")
CODE_LIMIT = 127
"""Compact `weight` holds codes clamped to ±127; the exact codes beyond are listed in the overflow COO."""


def quantization_config(k: float = DEFAULT_K) -> dict:
    """config.json `quantization_config` of the compact layout."""
    return {"quant_method": "w8aspike", "format": "compact", "group_size": GROUP_SIZE, "k": k}


def full_rank(config: GLAswaConfig) -> GLAswaConfig:
    """The config with a full-rank GLA gate, as W8ASpike checkpoints have (`gate_low_rank_dim` None)."""
    config = copy.deepcopy(config)
    config.gate_low_rank_dim = None
    return config


def quant_linear_names(config: GLAswaConfig) -> list[str]:
    """Every QuantLinear of the original W8ASpike model: q/k/v/o, the full-rank gk_proj, gate/up/down."""
    names = []
    for i, layer_type in enumerate(config.layer_types):
        p = f"model.layers.{i}."
        attn = ("q_proj", "k_proj", "v_proj", "o_proj") + (() if layer_type == SWA_LAYER else ("gk_proj",))
        names += [p + "attn." + a for a in attn] + [p + "mlp." + m for m in ("gate_proj", "up_proj", "down_proj")]
    return names


def expected_w8aspike_tensors(
    config: GLAswaConfig, layout: str
) -> dict[str, tuple[tuple[int | None, ...], torch.dtype | None]]:
    """Name -> (shape, dtype) of every tensor of a W8ASpike checkpoint in `layout`.

    dtype None means any floating dtype (the released checkpoint is float32); a None dimension has any
    length (the overflow lists). The gate is full rank whatever `config.gate_low_rank_dim` says.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shapes = expected_tensor_shapes(full_rank(config))
    expected = {name: (shape, None) for name, shape in shapes.items()}
    for prefix in quant_linear_names(config):
        out, in_features = shapes[prefix + ".weight"]
        if in_features % GROUP_SIZE:
            raise ValueError(f"{prefix}: {in_features} input features are not a multiple of {GROUP_SIZE}")
        groups = in_features // GROUP_SIZE
        if layout == "released":
            expected[prefix + RELEASED_SCALES] = ((out, groups, 1), None)
        elif is_spiked(prefix):
            expected[prefix + ".weight"] = ((out, in_features), torch.int8)
            expected[prefix + COMPACT_SCALE] = ((out, groups), torch.float32)
            for part, dtype in zip(OVERFLOW_PARTS, (torch.int32, torch.int32, torch.int16)):
                expected[prefix + part] = ((None,), dtype)
    return expected


def w8aspike_linear_tensors(prefix: str, weight: torch.Tensor, scales: torch.Tensor, layout: str) -> dict:
    """The tensors one QuantLinear stores (its bias aside), from float32 weight [out, in] and σ [out, in/128]."""
    if layout == "released":
        return {prefix + ".weight": weight, prefix + RELEASED_SCALES: scales.reshape(*scales.shape[:2], 1)}
    if not is_spiked(prefix):
        return {prefix + ".weight": weight}  # down_proj: float, no scales
    codes = weight_codes(weight, scales)
    if codes.abs().max() > torch.iinfo(torch.int16).max:
        raise ValueError(f"{prefix}: weight codes beyond int16; the scales do not fit the weight")
    rows, cols = (codes.abs() > CODE_LIMIT).nonzero(as_tuple=True)
    return {
        prefix + ".weight": codes.clamp(-CODE_LIMIT, CODE_LIMIT).to(torch.int8),
        prefix + COMPACT_SCALE: scales.reshape(*scales.shape[:2]).contiguous(),
        prefix + ".weight_overflow_rows": rows.to(torch.int32),
        prefix + ".weight_overflow_cols": cols.to(torch.int32),
        prefix + ".weight_overflow_codes": codes[rows, cols].to(torch.int16),
    }


def compact_codes(tensors: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """Exact int32 codes [out, in] of a compact linear: the clamped int8 codes, overflow COO written over."""
    codes = tensors[prefix + ".weight"].to(torch.int32)
    rows, cols, values = (tensors[prefix + part].long() for part in OVERFLOW_PARTS)
    codes[rows, cols] = values.to(torch.int32)
    return codes


def linear_codes(tensors: dict[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int32 [out, in], σ float32 [out, in/128]) of a spiked linear in either layout."""
    if prefix + COMPACT_SCALE in tensors:
        return compact_codes(tensors, prefix), tensors[prefix + COMPACT_SCALE].float()
    scales = tensors[prefix + RELEASED_SCALES]
    return weight_codes(tensors[prefix + ".weight"], scales), scales.reshape(*scales.shape[:2])


def to_w8aspike(
    tensors: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], layout: str
) -> dict[str, torch.Tensor]:
    """A full-rank float checkpoint and σ per QuantLinear (name prefix -> [out, in/128]) -> `layout`'s tensors."""
    result = {}
    for name, tensor in tensors.items():
        prefix = name.removesuffix(".weight")
        if prefix in scales:
            result |= w8aspike_linear_tensors(prefix, tensor, scales[prefix], layout)
        else:
            result[name] = tensor
    return result


def calibrated_like_scales(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """σ for a random weight, modified in place, so that codes behave like the released ones: about 1% beyond
    ±127 (σ = amax_group / (127 · 1.05), codes up to about ±133), and a few outlier weights with codes
    near ±190 (spec §7.2)."""
    out, in_features = weight.shape
    groups = in_features // GROUP_SIZE
    scales = weight.view(out, groups, GROUP_SIZE).abs().amax(-1) / (CODE_LIMIT * 1.05)
    outliers = max(1, weight.numel() // 4096)
    rows = torch.randint(out, (outliers,), generator=generator)
    cols = torch.randint(in_features, (outliers,), generator=generator)
    signs = torch.randint(2, (outliers,), generator=generator) * 2 - 1
    weight[rows, cols] = signs * 190.0 * scales[rows, cols // GROUP_SIZE]
    return scales


def save_w8aspike_checkpoint(
    directory: Path | str, spec: TinySpec = TinySpec(), layout: str = "released", seed: int | None = None,
    *, shards: int = 1,
) -> dict[str, torch.Tensor]:
    """A tiny random W8ASpike checkpoint in `layout` (safetensors); returns the tensors written.

    Both layouts of one seed hold the same model: identical codes, scales and float tensors.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    overrides = {"quantization_config": quantization_config(), "gate_low_rank_dim": None} if layout == "compact" else {}
    config = full_rank(write_model_files(directory, spec, overrides))
    seed = spec.seed if seed is None else seed
    tensors = random_tensors(config, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    scales = {p: calibrated_like_scales(tensors[p + ".weight"], generator) for p in quant_linear_names(config)}
    tensors = to_w8aspike(tensors, scales, layout)
    write_weights(directory, tensors, shards=shards)
    return tensors

