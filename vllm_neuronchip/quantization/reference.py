"""Pure-torch fp64 reference of the W8ASpike model (spec D5-D7, §7), built on the float reference, and
the exact float32 rounding blocks (spike_counts, weight_codes, kv_int8) that the vLLM method imports."""

import torch
import torch.nn.functional as F

from vllm_neuronchip.model_executor.config import GLAswaConfig
from vllm_neuronchip.model_executor.reference import Linear, reference_greedy, reference_logits

GROUP_SIZE = 128
"""Input features per weight scale (the original QuantLinear hard-codes it)."""
DEFAULT_K = 3.0
"""`dynamic_sfr`: vth = mean|x| / k."""
VTH_MIN, VTH_MAX = 1e-5, 1e4
"""Clamp of vth and of the K/V INT8 scale."""
SPIKED_LINEARS = (
    "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "attn.gk_proj", "mlp.gate_proj", "mlp.up_proj",
)
"""Name suffixes of the linears W8ASpike spikes (D7). `mlp.down_proj` stays float: its scales are ignored."""


def is_spiked(name: str) -> bool:
    """Whether the linear `name` (e.g. "model.layers.0.attn.gk_proj") is spiked; not low-rank gate parts."""
    return name.endswith(tuple("." + s for s in SPIKED_LINEARS))


def spike_counts(x: torch.Tensor, k: float = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer activations of each row (last dim) of x -> (s int32 [..., n], vth float32 [..., 1]).

    x is cast to float32 first; the mean, the division and the rounding (half to even) are float32.
    No clamp on s: |s| <= k * n whatever x is, unless vth hits its clamp.
    """
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    xf = x.to(torch.float32)
    vth = (xf.abs().mean(-1, keepdim=True) / k).clamp(VTH_MIN, VTH_MAX)
    return torch.round(xf / vth).to(torch.int32), vth


def _groups(in_features: int, what: str) -> int:
    if in_features % GROUP_SIZE:
        raise ValueError(f"{what}: {in_features} input features are not a multiple of the group size {GROUP_SIZE}")
    return in_features // GROUP_SIZE


def weight_codes(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Codes `round(W / σ)` (half to even, no clamp) as int32 [out, in].

    weight float32 [out, in]; scales σ float32 [out, in/128] or the released [out, in/128, 1].
    Both must be float32: codes computed from a bf16 copy differ near rounding boundaries (D5).
    """
    if weight.dtype != torch.float32 or scales.dtype != torch.float32:
        raise TypeError(
            f"weight_codes needs the stored float32 weight and scales, got {weight.dtype} and {scales.dtype}"
        )
    out, in_features = weight.shape
    groups = _groups(in_features, "weight_codes")
    if scales.numel() != out * groups or scales.shape[:2] != (out, groups):
        raise ValueError(f"scales of shape {tuple(scales.shape)} do not fit a weight of shape {(out, in_features)}")
    codes = torch.round(weight.view(out, groups, GROUP_SIZE) / scales.reshape(out, groups, 1))
    return codes.view(out, in_features).to(torch.int32)


def kv_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 symmetric codes of each row of x (SWA K or V per (token, KV head)).

    Returns (codes int8 [..., d], scale float32 [..., 1]); computed in float32, half to even.
    """
    xf = x.to(torch.float32)
    scale = (xf.abs().amax(-1, keepdim=True) / 127).clamp(VTH_MIN, VTH_MAX)
    return torch.round(xf / scale).clamp(-128, 127).to(torch.int8), scale


def integer_accumulations(s: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """acc[r, o, g] = Σ_{i in group g} s[r, i] · codes[o, i], exact in int64. s [rows, in], codes [out, in]."""
    rows, in_features = s.shape
    groups = _groups(in_features, "integer_accumulations")
    return torch.einsum(
        "rgi,ogi->rog", s.long().view(rows, groups, GROUP_SIZE), codes.long().view(-1, groups, GROUP_SIZE)
    )


def spiked_linear(
    x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, k: float = DEFAULT_K
) -> torch.Tensor:
    """One W8ASpike linear on the rows of x: `vth · Σ_g σ_g (Σ_{i∈g} s_i c_i) + b` in float64 (§7.5)."""
    s, vth = spike_counts(x, k)
    acc = integer_accumulations(s, codes).double()  # exact: every value is an integer below 2^53
    y = vth.double() * (acc * scales.reshape(acc.shape[1:]).double()).sum(-1)
    return y if bias is None else y + bias.double()


def spiked(x: torch.Tensor, k: float = DEFAULT_K) -> torch.Tensor:
    """x replaced by its spike counts times vth (SWA Q per (token, head)), float64."""
    s, vth = spike_counts(x, k)
    return s.double() * vth.double()


def kv_fake_int8(x: torch.Tensor) -> torch.Tensor:
    """x replaced by its INT8 codes times their scale (SWA K and V), float64."""
    codes, scale = kv_int8(x)
    return codes.double() * scale.double()


def w8aspike_linear(tensors: dict[str, torch.Tensor], k: float = DEFAULT_K) -> Linear:
    """The reference's `linear` hook: spiked linears from codes and scales (either checkpoint layout),
    every other linear (down_proj) in float64."""
    from vllm_neuronchip.quantization.checkpoint import linear_codes  # imports this module: import late

    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        bias = tensors.get(name + ".bias")
        if not is_spiked(name):
            return F.linear(x, tensors[name + ".weight"].double(), None if bias is None else bias.double())
        if name not in quantized:
            quantized[name] = linear_codes(tensors, name)
        codes, scales = quantized[name]
        return spiked_linear(x, codes, scales, bias, k)

    return linear


def w8aspike_swa_qkv(k: float = DEFAULT_K):
    """The reference's `swa_qkv` hook: Q spiked per (token, head), K and V INT8 per (token, KV head)."""
    return lambda q, key, v: (spiked(q, k), kv_fake_int8(key), kv_fake_int8(v))


def w8aspike_reference_logits(
    token_ids: list[int], tensors: dict[str, torch.Tensor], config: GLAswaConfig, k: float = DEFAULT_K
) -> torch.Tensor:
    """W8ASpike logits [T, vocab] for one sequence, from tensors in the released or the compact layout.

    Discontinuous in its inputs (D11): another implementation agrees only where the result is stable.
    """
    return reference_logits(token_ids, tensors, config, linear=w8aspike_linear(tensors, k), swa_qkv=w8aspike_swa_qkv(k))


def w8aspike_reference_greedy(
    prompt: list[int], tensors: dict[str, torch.Tensor], config: GLAswaConfig, max_tokens: int, k: float = DEFAULT_K
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy W8ASpike continuation by full recompute; tokens and each step's log-probabilities."""
    return reference_greedy(
        prompt, tensors, config, max_tokens, linear=w8aspike_linear(tensors, k), swa_qkv=w8aspike_swa_qkv(k)
    )
