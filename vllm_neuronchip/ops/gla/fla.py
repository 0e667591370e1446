"""GPU backend of `ops.gla`: fla's chunk_gla for prefill (with NEURONCHIP_GLA_PREFILL=fla), our Triton kernel for decode.
fla and triton are imported on first use, so this module imports on machines without them."""

import functools
from pathlib import Path

import torch
from vllm.logger import init_logger

logger = init_logger("vllm.neuronchip.fla")


def gla_varlen(q, k, v, g, *, state, state_indices, cu_seqlens, has_initial_state, scale):
    """All prefills of a step in one fla launch. fla's GLA has no GQA, so k/v/g and the initial states are
    repeated over the G query heads of each KV head, and the G identical final states are stored once."""
    chunk_gla = _chunk_gla()
    G = q.shape[1] // k.shape[1]
    slots = state_indices.long()
    initial_state = torch.where(has_initial_state[:, None, None, None], state[slots], 0.0)
    # fp32 inputs keep fla's materialised inter-chunk states in fp32 (with bf16 inputs they are bf16).
    # fla's kernels need contiguous inputs: q arrives as a strided view of the fused qkv projection
    # (a misaligned-address fault on the H100 otherwise).
    k, v, g = (x.float().repeat_interleave(G, dim=1)[None] for x in (k, v, g))
    o, final_state = chunk_gla(
        q.float().contiguous()[None], k, v, g, scale=scale, initial_state=initial_state.repeat_interleave(G, dim=1),
        output_final_state=True, cu_seqlens=cu_seqlens.long(),
    )
    state[slots] = final_state[:, ::G]
    return o[0]


def gla_decode(q, k, v, g, *, state, state_indices, has_initial_state, scale, out=None):
    """One token per sequence, state updated in place by slot; no host sync, so CUDA-graph safe. q, k, v, g are
    read through their strides (column slices of the packed q|k|v|g) and o is written into `out` if given: no
    copies around the kernel (in a decode step each would be one more launch per GLA layer)."""
    import triton

    N, H, K = q.shape
    Hkv, V = v.shape[1], v.shape[2]
    o = q.new_empty(N, H, V, dtype=torch.float32) if out is None else out
    assert all(x.stride(-1) == 1 for x in (q, k, v, g, o)), "the head dimension must be contiguous"
    BV = min(32, triton.next_power_of_2(V))
    _decode_kernel()[(N, Hkv, triton.cdiv(V, BV))](
        q, q.stride(0), q.stride(1), k, k.stride(0), k.stride(1), v, v.stride(0), v.stride(1),
        g, g.stride(0), g.stride(1), state, *state.stride(), state_indices, has_initial_state,
        o, o.stride(0), o.stride(1), scale,
        HKV=Hkv, G=H // Hkv, K=K, V=V, BK=triton.next_power_of_2(K), BV=BV,
    )
    return o


@functools.cache
def _chunk_gla():
    """fla's chunk_gla, its autotuners pinned to this GPU's configs (fla_configs.py) unless settings say autotune."""
    from fla.ops.gla import chunk_gla

    from vllm_neuronchip.ops import gpu_tables
    from vllm_neuronchip.ops.gla import fla_configs
    from vllm_neuronchip.settings import get_settings

    settings = get_settings()
    if not settings.fla_autotune:
        table = Path(settings.fla_configs) if settings.fla_configs else fla_configs.TABLE
        gpu = torch.cuda.get_device_name()
        entry, pinned = fla_configs.pin(gpu, gpu_tables.device_arch(), table)
        logger.info("fla GLA kernels on %s: %d autotuned kernels pinned to the %s entry of %s",
                    gpu, len(pinned), entry, table)
    return chunk_gla


@functools.cache
def _decode_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gla_decode_kernel(
        q, s_qt, s_qh, k, s_kt, s_kh, v, s_vt, s_vh, g, s_gt, s_gh, state, s_slot, s_head, s_key, s_value,
        state_indices, has_initial_state, o, s_ot, s_oh, scale,
        HKV: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    ):
        # One program per (sequence, KV head, block of V): one state load serves the G query heads of the group.
        i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        o_k = tl.arange(0, BK)
        o_v = i_v * BV + tl.arange(0, BV)
        m_k, m_v = o_k < K, o_v < V
        p_o = o + i_n.to(tl.int64) * s_ot + i_h * G * s_oh + o_v
        slot = tl.load(state_indices + i_n).to(tl.int64)
        if slot < 0:  # padding row of a CUDA graph batch
            for i_g in tl.static_range(G):
                tl.store(p_o + i_g * s_oh, tl.zeros([BV], dtype=tl.float32), mask=m_v)
        else:
            p_s = state + slot * s_slot + i_h * s_head + o_k[:, None] * s_key + o_v[None, :] * s_value
            m_s = m_k[:, None] & m_v[None, :]
            b_s = tl.load(p_s, mask=m_s, other=0.0)
            b_s = tl.where(tl.load(has_initial_state + i_n) != 0, b_s, 0.0)  # a fresh slot may hold NaN
            row = i_n.to(tl.int64)
            b_k = tl.load(k + row * s_kt + i_h * s_kh + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_g = tl.load(g + row * s_gt + i_h * s_gh + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_v = tl.load(v + row * s_vt + i_h * s_vh + o_v, mask=m_v, other=0.0).to(tl.float32)
            b_s = b_s * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
            tl.store(p_s, b_s, mask=m_s)
            for i_g in tl.static_range(G):
                b_q = tl.load(q + row * s_qt + (i_h * G + i_g) * s_qh + o_k, mask=m_k, other=0.0).to(tl.float32)
                tl.store(p_o + i_g * s_oh, tl.sum((b_q * scale)[:, None] * b_s, axis=0), mask=m_v)

    return gla_decode_kernel
