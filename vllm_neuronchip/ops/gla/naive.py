"""Reference GLA recurrence (spec §3.2), one token at a time, like fla's `fla/ops/gla/naive.py`.
Slow and obviously correct: every fast path of `ops.gla` is tested against it."""

import torch


def naive_recurrent_gla(q, k, v, g, initial_state, scale):
    """One sequence. q [T,H,K], k/g [T,Hkv,K], v [T,Hkv,V], initial_state [Hkv,K,V].

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t and o_t = (scale q_t) S_t, query head h reading KV head
    h // (H // Hkv). Returns (o [T,H,V], final state [Hkv,K,V]), both fp32.
    """
    T, H, K = q.shape
    Hkv, V = v.shape[1], v.shape[2]
    q = q.float().view(T, Hkv, H // Hkv, K) * scale
    k, v, g = k.float(), v.float(), g.float()
    S = initial_state.float().clone()
    o = q.new_empty(T, Hkv, H // Hkv, V)
    for t in range(T):
        S = S * g[t].exp()[..., None] + k[t, :, :, None] * v[t, :, None, :]
        o[t] = (q[t, :, :, :, None] * S[:, None]).sum(-2)
    return o.view(T, H, V), S


def gla_varlen(q, k, v, g, *, state, state_indices, cu_seqlens, has_initial_state, scale,
               recurrence=naive_recurrent_gla):
    """Runs `recurrence` on each sequence of a packed batch, reading and writing its state slot in place."""
    o = q.new_empty(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float32)
    bounds = cu_seqlens.tolist()
    for i, (slot, warm) in enumerate(zip(state_indices.tolist(), has_initial_state.tolist())):
        a, b = bounds[i], bounds[i + 1]
        initial_state = state[slot] if warm else torch.zeros_like(state[slot])
        o[a:b], state[slot] = recurrence(q[a:b], k[a:b], v[a:b], g[a:b], initial_state, scale)
    return o


def gla_decode(q, k, v, g, *, state, state_indices, has_initial_state, scale, out=None):
    """One token per sequence; rows with a negative slot are padding (output 0, no state touched)."""
    o = q.new_zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float32)
    for i, (slot, warm) in enumerate(zip(state_indices.tolist(), has_initial_state.tolist())):
        if slot < 0:
            continue
        initial_state = state[slot] if warm else torch.zeros_like(state[slot])
        o[i : i + 1], state[slot] = naive_recurrent_gla(
            q[i : i + 1], k[i : i + 1], v[i : i + 1], g[i : i + 1], initial_state, scale
        )
    return written(o, out)


def written(o: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """o, or o copied into `out` where the caller gave one (the GPU decode kernel writes there directly)."""
    if out is None:
        return o
    out.copy_(o)
    return out
