"""Chunked GLA recurrence in plain torch: the CPU backend of `ops.gla`, matmuls instead of a token loop.
Decays are products of per-token factors exp(g_t) in [0, 1], as in the recurrence: nothing overflows for any g <= 0."""

import functools

import torch
import torch.nn.functional as F

from vllm_neuronchip.ops.gla import naive

CHUNK = 16  # tokens per chunk; the decay of every (i, j, key) in a chunk is materialised, CHUNK * K floats a token
SEGMENT = 512  # tokens (a multiple of CHUNK) converted to fp32 and processed at once: memory independent of T


def chunk_gla(q, k, v, g, initial_state, scale):
    """One sequence, same contract as `naive.naive_recurrent_gla`: returns (o [T,H,V], final state [Hkv,K,V]) fp32."""
    T = q.shape[0]
    o = q.new_empty(-(-T // CHUNK) * CHUNK, q.shape[1], v.shape[2], dtype=torch.float32)
    S = initial_state.float()
    for t in range(0, T, SEGMENT):
        S = _segment(*(x[t : t + SEGMENT] for x in (q, k, v, g)), o[t : t + SEGMENT], S, scale)
    return o[:T], S.clone()


def _segment(q, k, v, g, o, S, scale):
    """Writes the outputs of up to SEGMENT tokens into o (padded to whole chunks); returns the state after them."""
    T, H, K = q.shape
    Hkv, V = v.shape[1], v.shape[2]
    G, C = H // Hkv, CHUNK
    n = -(-T // C)

    def chunks(x, *heads):  # [T, Hkv*heads, D] -> fp32 [n, Hkv, C, *heads, D]; zero tail tokens keep the state
        y = x.new_empty(n, Hkv, C, *heads, x.shape[-1], dtype=torch.float32)
        y.transpose(1, 2).copy_(F.pad(x, (0, 0, 0, 0, 0, n * C - T)).view(y.transpose(1, 2).shape))
        return y

    q, k, v, alpha = chunks(q, G).mul_(scale), chunks(k), chunks(v), chunks(g).exp_()

    # decay[i, j] = prod_{j<t<=i} alpha_t for j <= i, 0 for j > i: [n, Hkv, i, j, K]
    decay = q.new_empty(n, Hkv, C, C, K)
    decay[:, :, 0] = 0
    decay[:, :, 0, 0] = 1
    for i in range(1, C):
        torch.mul(decay[:, :, i - 1], alpha[:, :, i, None], out=decay[:, :, i])
        decay[:, :, i, i] = 1
    decay_in = decay[:, :, :, 0] * alpha[:, :, :1]  # prod_{t<=i}: the state entering the chunk, seen at token i
    k_out = k * decay[:, :, -1]  # k_j decayed to the end of the chunk, prod_{t>j}

    # Within the chunk: A[i, :, j] = sum_key q_i k_j decay[i, j].
    A = q @ decay.mul_(k[:, :, None]).transpose(-1, -2)  # [n, Hkv, i, G, j]
    o_chunks = A.view(n, Hkv, C * G, C) @ v

    # Across chunks: scan the state entering each chunk, then read it from every query of the chunk.
    states = torch.cat([S[None], k_out.transpose(-1, -2) @ v])  # [n+1, Hkv, K, V]
    chunk_decay = decay_in[:, :, -1, :, None]
    for c in range(n):
        states[c + 1].addcmul_(states[c], chunk_decay[c])
    o_chunks += q.mul_(decay_in[:, :, :, None]).view(n, Hkv, C * G, K) @ states[:n]

    o.view(n, C, Hkv, G, V).copy_(o_chunks.view(n, Hkv, C, G, V).transpose(1, 2))
    return states[n]


gla_varlen = functools.partial(naive.gla_varlen, recurrence=chunk_gla)


def gla_decode(q, k, v, g, *, state, state_indices, has_initial_state, scale, out=None):
    """One token per sequence, vectorised over the batch; rows with a negative slot are padding."""
    N, H, K = q.shape
    Hkv = k.shape[1]
    live = state_indices >= 0
    slots = state_indices[live].long()
    S = torch.where(has_initial_state[live, None, None, None], state[slots], 0.0)
    S = S * g[live].float().exp()[..., None] + k[live].float()[..., None] * v[live].float()[..., None, :]
    state[slots] = S
    o = q.new_zeros(N, Hkv, H // Hkv, v.shape[2], dtype=torch.float32)
    o[live] = (q[live].float().view(-1, Hkv, H // Hkv, K) * scale) @ S
    return naive.written(o.view(N, H, -1), out)
