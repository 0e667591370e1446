"""Pure-torch reference of the whole SpikingBrain model: fp32, full recompute, no cache (spec D1).

The test oracle for the vLLM model. Written from spec §3.6 and §5, independent of the plugin's
ops and of vLLM; `tensors` are the checkpoint's tensors under their original names.
Two hooks let W8ASpike (quantization/reference.py) reuse it: `linear` and `swa_qkv`.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vllm_neuronchip.model_executor.config import SWA_LAYER, GLAswaConfig

Linear = Callable[[torch.Tensor, str], torch.Tensor]
"""`linear(x, name)`: apply the checkpoint linear `name` (original name without `.weight`) to x [T, in]."""
QKVHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""`swa_qkv(q, k, v)` after RoPE, q [heads, T, d], k/v [kv_heads, T, d]; returns the tensors attention uses."""


def float_linear(P: dict[str, torch.Tensor]) -> Linear:
    """The float linear over the tensors P: x @ W.T + b."""
    return lambda x, name: F.linear(x, P[name + ".weight"], P.get(name + ".bias"))


def scoped(linear: Linear, prefix: str) -> Linear:
    return lambda x, name: linear(x, prefix + name)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def gla_recurrent(q, k, v, log_decay, scale):
    """Per-token recurrence, heads already aligned: q,k,log_decay [H,T,K], v [H,T,V] -> o [H,T,V]."""
    H, T, K = q.shape
    S = torch.zeros(H, K, v.shape[-1], dtype=torch.float64)
    o = torch.empty(H, T, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        S = S * log_decay[:, t].exp()[..., None] + k[:, t, :, None] * v[:, t, None, :]
        o[:, t] = torch.einsum("hk,hkv->hv", q[:, t] * scale, S)
    return o


def gla_layer(x, p, config: GLAswaConfig, linear: Linear | None = None):
    """`p`: the layer's `attn.` tensors by short name; `linear` takes the same short names."""
    linear = linear or float_linear(p)
    T, d = x.shape[0], config.head_dim
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    q = F.relu(linear(x, "q_proj"))
    k = F.relu(linear(x, "k_proj"))
    v = linear(x, "v_proj")
    if "gk_proj.weight" in p:
        gk = linear(x, "gk_proj")
    else:
        gk = linear(linear(x, "gk_proj.0"), "gk_proj.1")
    log_decay = F.logsigmoid(gk) / config.gate_logit_normalizer
    heads = lambda t, h: t.view(T, h, d).transpose(0, 1)  # noqa: E731
    k, v, log_decay = (heads(t, nkv).repeat_interleave(nh // nkv, 0) for t in (k, v, log_decay))
    o = gla_recurrent(heads(q, nh), k, v, log_decay, d**-0.5)
    o = rmsnorm(o, p["g_norm.weight"], config.norm_eps)
    return linear(o.transpose(0, 1).reshape(T, nh * d), "o_proj")


def rope(x, positions, theta):
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = positions[:, None].double() * inv_freq[None]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def swa_layer(x, p, config: GLAswaConfig, linear: Linear | None = None, swa_qkv: QKVHook | None = None):
    """Each query sees itself and the `sliding_window` previous tokens: W + 1 keys (spec D2)."""
    linear = linear or float_linear(p)
    T, d = x.shape[0], config.head_dim
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    positions = torch.arange(T)
    q = linear(x, "q_proj").view(T, nh, d).transpose(0, 1)
    k = linear(x, "k_proj").view(T, nkv, d).transpose(0, 1)
    v = linear(x, "v_proj").view(T, nkv, d).transpose(0, 1)
    q, k = rope(q, positions, config.rope_theta), rope(k, positions, config.rope_theta)
    if swa_qkv is not None:
        q, k, v = swa_qkv(q, k, v)
    k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
    i = positions
    visible = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - config.sliding_window)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=d**-0.5)
    return linear(o.transpose(0, 1).reshape(T, nh * d), "o_proj")


@torch.no_grad()
def reference_logits(
    token_ids: list[int], tensors: dict[str, torch.Tensor], config: GLAswaConfig,
    *, linear: Linear | None = None, swa_qkv: QKVHook | None = None,
) -> torch.Tensor:
    """Logits [T, vocab] for one sequence, computed in float64 from scratch.

    `linear` replaces every q/k/v/o, gate and MLP linear (default: float); `swa_qkv` acts on SWA q/k/v after RoPE.
    """
    P = {name: t.double() for name, t in tensors.items()}
    linear = linear or float_linear(P)
    eps = config.norm_eps
    h = P["model.embeddings.weight"][torch.tensor(token_ids)]
    for i, layer_type in enumerate(config.layer_types):
        pre = f"model.layers.{i}."
        attn_params = {n[len(pre) + 5 :]: t for n, t in P.items() if n.startswith(pre + "attn.")}
        x = rmsnorm(h, P[pre + "attn_norm.weight"], eps)
        attn_linear = scoped(linear, pre + "attn.")
        if layer_type == SWA_LAYER:
            r = h + swa_layer(x, attn_params, config, attn_linear, swa_qkv)
        else:
            r = h + gla_layer(x, attn_params, config, attn_linear)
        m = rmsnorm(r, P[pre + "mlp_norm.weight"], eps)
        gate, up = linear(m, pre + "mlp.gate_proj"), linear(m, pre + "mlp.up_proj")
        h = r + linear(F.silu(gate) * up, pre + "mlp.down_proj")
    lm_head = P.get("lm_head.weight", P["model.embeddings.weight"])
    return F.linear(rmsnorm(h, P["model.norm.weight"], eps), lm_head)


def reference_greedy(
    prompt: list[int], tensors, config: GLAswaConfig, max_tokens: int,
    *, linear: Linear | None = None, swa_qkv: QKVHook | None = None,
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy continuation by full recompute; returns tokens and each step's log-probabilities."""
    ids, logprobs = list(prompt), []
    for _ in range(max_tokens):
        lp = torch.log_softmax(reference_logits(ids, tensors, config, linear=linear, swa_qkv=swa_qkv)[-1], -1)
        logprobs.append(lp)
        ids.append(int(lp.argmax()))
    return ids[len(prompt) :], logprobs
