"""Pure-torch reference of the whole SpikingBrain model: fp32, full recompute, no cache (spec D1).

The test oracle for the vLLM model. Written from spec §3.6 and §5, independent of the plugin's
ops and of vLLM; `tensors` are the checkpoint's tensors under their original names.
"""

import torch
import torch.nn.functional as F

from vllm_neuronchip.model_executor.config import SWA_LAYER, GLAswaConfig


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


def gla_layer(x, p, config: GLAswaConfig):
    T, d = x.shape[0], config.head_dim
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    q = F.relu(F.linear(x, p["q_proj.weight"], p["q_proj.bias"]))
    k = F.relu(F.linear(x, p["k_proj.weight"], p["k_proj.bias"]))
    v = F.linear(x, p["v_proj.weight"], p["v_proj.bias"])
    if "gk_proj.weight" in p:
        gk = F.linear(x, p["gk_proj.weight"], p["gk_proj.bias"])
    else:
        gk = F.linear(F.linear(x, p["gk_proj.0.weight"]), p["gk_proj.1.weight"], p["gk_proj.1.bias"])
    log_decay = F.logsigmoid(gk) / config.gate_logit_normalizer
    heads = lambda t, h: t.view(T, h, d).transpose(0, 1)  # noqa: E731
    k, v, log_decay = (heads(t, nkv).repeat_interleave(nh // nkv, 0) for t in (k, v, log_decay))
    o = gla_recurrent(heads(q, nh), k, v, log_decay, d**-0.5)
    o = rmsnorm(o, p["g_norm.weight"], config.norm_eps)
    return F.linear(o.transpose(0, 1).reshape(T, nh * d), p["o_proj.weight"])


def rope(x, positions, theta):
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = positions[:, None].double() * inv_freq[None]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def swa_layer(x, p, config: GLAswaConfig):
    """Each query sees itself and the `sliding_window` previous tokens: W + 1 keys (spec D2)."""
    T, d = x.shape[0], config.head_dim
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    positions = torch.arange(T)
    q = F.linear(x, p["q_proj.weight"], p["q_proj.bias"]).view(T, nh, d).transpose(0, 1)
    k = F.linear(x, p["k_proj.weight"], p["k_proj.bias"]).view(T, nkv, d).transpose(0, 1)
    v = F.linear(x, p["v_proj.weight"], p["v_proj.bias"]).view(T, nkv, d).transpose(0, 1)
    q, k = rope(q, positions, config.rope_theta), rope(k, positions, config.rope_theta)
    k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
    i = positions
    visible = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - config.sliding_window)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=d**-0.5)
    return F.linear(o.transpose(0, 1).reshape(T, nh * d), p["o_proj.weight"])


@torch.no_grad()
def reference_logits(token_ids: list[int], tensors: dict[str, torch.Tensor], config: GLAswaConfig) -> torch.Tensor:
    """Logits [T, vocab] for one sequence, computed in float64 from scratch."""
    P = {name: t.double() for name, t in tensors.items()}
    eps = config.norm_eps
    h = P["model.embeddings.weight"][torch.tensor(token_ids)]
    for i, layer_type in enumerate(config.layer_types):
        pre = f"model.layers.{i}."
        attn_params = {n[len(pre) + 5 :]: t for n, t in P.items() if n.startswith(pre + "attn.")}
        x = rmsnorm(h, P[pre + "attn_norm.weight"], eps)
        attn = swa_layer if layer_type == SWA_LAYER else gla_layer
        r = h + attn(x, attn_params, config)
        m = rmsnorm(r, P[pre + "mlp_norm.weight"], eps)
        gate, up = F.linear(m, P[pre + "mlp.gate_proj.weight"]), F.linear(m, P[pre + "mlp.up_proj.weight"])
        h = r + F.linear(F.silu(gate) * up, P[pre + "mlp.down_proj.weight"])
    lm_head = P.get("lm_head.weight", P["model.embeddings.weight"])
    return F.linear(rmsnorm(h, P["model.norm.weight"], eps), lm_head)


def reference_greedy(prompt: list[int], tensors, config: GLAswaConfig, max_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy continuation by full recompute; returns tokens and each step's log-probabilities."""
    ids, logprobs = list(prompt), []
    for _ in range(max_tokens):
        lp = torch.log_softmax(reference_logits(ids, tensors, config)[-1], -1)
        logprobs.append(lp)
        ids.append(int(lp.argmax()))
    return ids[len(prompt) :], logprobs
