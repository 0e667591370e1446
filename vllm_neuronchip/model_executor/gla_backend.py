"""vLLM's linear-attention backend for the GLA layers: decode slots and has-state flags kept in persistent
buffers, and the prefill part's sequence bounds built once per step.

A FULL CUDA graph replays the addresses it captured. vLLM's `LinearAttentionMetadataBuilder` gathers each
request's state slot from the block table into a new tensor on every step when prefix caching is on ('align'
mode), so a replayed decode graph read slots from freed memory (an illegal-address fault on an H200; without
prefix caching the slots are a view of the persistent block table and it worked). vLLM's Mamba builders copy
decode slots into a persistent buffer; this builder does the same, and marks padded rows (seq_len 0) with
PAD_SLOT_ID, which the decode kernel skips. Beside them it records which decodes continue a sequence (seq_len > 1;
a brand-new 1-token prompt is scheduled as a decode and its slot holds a stale state): once a step here instead
of one comparison kernel per GLA layer inside the graph.

fla's varlen index helpers read sequence bounds on the host (two syncs per call) and cache their results by
tensor identity. Every GLA layer of a step shares this builder's metadata, so handing them all the same
`prefill_cu_seqlens` tensor makes those syncs happen once a step instead of once per layer.
"""

from dataclasses import dataclass, fields

import torch
from vllm.v1.attention.backends.linear_attn import (
    LinearAttentionBackend,
    LinearAttentionMetadata,
    LinearAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.utils import PAD_SLOT_ID


def persistent_decode_rows(slot_buffer: torch.Tensor, state_buffer: torch.Tensor, slots: torch.Tensor,
                           seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a decode batch's slots into the head of `slot_buffer`, padded rows (seq_len 0) as PAD_SLOT_ID, and
    whether each row continues a sequence (seq_len > 1) into `state_buffer`; returns the views of both buffers to
    hand to the kernels."""
    n = slots.shape[0]
    rows, has_state = slot_buffer[:n], state_buffer[:n]
    rows.copy_(torch.where(seq_lens[:n] > 0, slots, PAD_SLOT_ID), non_blocking=True)
    torch.gt(seq_lens[:n], 1, out=has_state)
    return rows, has_state


@dataclass
class GLAMetadata(LinearAttentionMetadata):
    prefill_cu_seqlens: torch.Tensor | None = None
    """int64 [prefills + 1]: token bounds of the prefills, from 0 at the first prefill token."""
    prefill_has_context: torch.Tensor | None = None
    """bool [prefills]: the prefill continues a sequence (its slot holds a state), e.g. a later chunk."""
    decode_has_state: torch.Tensor | None = None
    """bool [decodes, or more in a padded batch]: the decode continues a sequence (seq_len > 1)."""


def prefill_bounds(metadata: LinearAttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """(cu_seqlens, has_context) of the prefills, which follow the decodes in vLLM's batch order."""
    first = metadata.num_decodes
    cu_seqlens = (metadata.query_start_loc[first:] - metadata.num_decode_tokens).long()
    has_context = metadata.seq_lens[first : first + metadata.num_prefills] > cu_seqlens[1:] - cu_seqlens[:-1]
    return cu_seqlens, has_context


class GLAMetadataBuilder(LinearAttentionMetadataBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        rows = max(vllm_config.scheduler_config.max_num_seqs,
                   vllm_config.compilation_config.max_cudagraph_capture_size or 0)
        self.decode_slots = torch.full((rows,), PAD_SLOT_ID, dtype=torch.int32, device=device)
        self.decode_has_state = torch.zeros(rows, dtype=torch.bool, device=device)

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False) -> GLAMetadata:
        base = super().build(common_prefix_len, common_attn_metadata, fast_build)
        metadata = GLAMetadata(**{field.name: getattr(base, field.name) for field in fields(base)})
        if metadata.num_prefills:
            metadata.prefill_cu_seqlens, metadata.prefill_has_context = prefill_bounds(metadata)
        if not metadata.num_prefills and metadata.state_indices_tensor.shape[0] <= self.decode_slots.shape[0]:
            metadata.state_indices_tensor, metadata.decode_has_state = persistent_decode_rows(
                self.decode_slots, self.decode_has_state, metadata.state_indices_tensor, metadata.seq_lens
            )
        else:
            metadata.decode_has_state = metadata.seq_lens[: metadata.num_decodes] > 1
        return metadata


class GLABackend(LinearAttentionBackend):
    @staticmethod
    def get_builder_cls() -> type[GLAMetadataBuilder]:
        return GLAMetadataBuilder
