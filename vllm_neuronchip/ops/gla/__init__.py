"""GLA recurrence of the SpikingBrain-7B even layers (spec §3.2): one function per op, backend chosen by device.
CUDA prefill goes to `triton_chunk` (our GQA-aware kernels; fla's chunk_gla in `fla` with
NEURONCHIP_GLA_PREFILL=fla), CUDA decode to `fla` (our Triton decode kernel), CPU tensors to `chunk` (plain
torch); `naive` is the reference."""

import torch

from vllm_neuronchip.ops.gla import chunk, fla, triton_chunk
from vllm_neuronchip.ops.gla.naive import gla_decode as naive_gla_decode
from vllm_neuronchip.ops.gla.naive import gla_varlen as naive_gla_varlen
from vllm_neuronchip.ops.gla.naive import naive_recurrent_gla
from vllm_neuronchip.settings import get_settings


def gla_varlen(q, k, v, g, *, state, state_indices, cu_seqlens, has_initial_state, scale) -> torch.Tensor:
    """Prefill a packed batch. q [T,H,K], k/g [T,Hkv,K], v [T,Hkv,V]; query head h reads KV head h // (H // Hkv).

    Sequence i (tokens cu_seqlens[i]:cu_seqlens[i+1]) starts from state[state_indices[i]] if has_initial_state[i],
    else from zeros, and its final state is written back there. state [slots,Hkv,K,V] fp32 is updated in place.
    Returns o [T,H,V] fp32, o_t = (scale q_t) S_t with S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t.
    """
    if not q.is_cuda:
        backend = chunk
    else:
        backend = fla if get_settings().gla_prefill == "fla" else triton_chunk
    return backend.gla_varlen(
        q, k, v, g, state=state, state_indices=state_indices, cu_seqlens=cu_seqlens,
        has_initial_state=has_initial_state, scale=scale,
    )


def gla_decode(q, k, v, g, *, state, state_indices, has_initial_state, scale, out=None) -> torch.Tensor:
    """One token per sequence: q [N,H,K], k/g [N,Hkv,K], v [N,Hkv,V]; state semantics as in `gla_varlen`.

    Rows with state_indices < 0 are padding: output 0, no state touched. No host sync (CUDA-graph safe on GPU).
    Returns o [N,H,V] fp32, written into `out` if given.
    """
    backend = fla if q.is_cuda else chunk
    return backend.gla_decode(
        q, k, v, g, state=state, state_indices=state_indices, has_initial_state=has_initial_state, scale=scale,
        out=out,
    )


__all__ = ["gla_decode", "gla_varlen", "naive_gla_decode", "naive_gla_varlen", "naive_recurrent_gla"]
