"""GLA decode slots and has-state flags live in persistent buffers (what a FULL CUDA graph replays), padded rows
skipped."""

import torch
from vllm.v1.attention.backends.utils import PAD_SLOT_ID

from vllm_neuronchip.model_executor.gla_backend import GLABackend, GLAMetadataBuilder, persistent_decode_rows


def test_decode_rows_are_copied_into_the_same_buffers_with_padding_marked():
    slot_buffer = torch.full((8,), PAD_SLOT_ID, dtype=torch.int32)
    state_buffer = torch.zeros(8, dtype=torch.bool)
    slots, has_state = persistent_decode_rows(
        slot_buffer, state_buffer, torch.tensor([5, 9, 0, 0], dtype=torch.int32), torch.tensor([3, 1, 0, 0]))
    assert slots.data_ptr() == slot_buffer.data_ptr() and slots.tolist() == [5, 9, PAD_SLOT_ID, PAD_SLOT_ID]
    assert has_state.data_ptr() == state_buffer.data_ptr()
    assert has_state.tolist() == [True, False, False, False]  # a 1-token prompt scheduled as a decode starts afresh
    gathered = torch.tensor([2, 4], dtype=torch.int32)  # a fresh tensor each step, as vLLM's 'align' gather
    slots, has_state = persistent_decode_rows(slot_buffer, state_buffer, gathered, torch.tensor([2, 12]))
    assert slots.data_ptr() == slot_buffer.data_ptr() and slots.tolist() == [2, 4]
    assert has_state.data_ptr() == state_buffer.data_ptr() and has_state.tolist() == [True, True]


def test_gla_layers_use_the_persistent_slot_builder():
    from vllm_neuronchip.model_executor.gla_layer import GatedLinearAttention

    assert GatedLinearAttention.get_attn_backend(None) is GLABackend
    assert GLABackend.get_builder_cls() is GLAMetadataBuilder


def two_decodes_two_prefills():
    """Batch of 2 decodes (1 token each) then prefills of 3 tokens (new) and 5 tokens (a later chunk)."""
    from vllm_neuronchip.model_executor.gla_backend import GLAMetadata

    return GLAMetadata(
        num_prefills=2, num_prefill_tokens=8, num_decodes=2, num_decode_tokens=2,
        query_start_loc=torch.tensor([0, 1, 2, 5, 10], dtype=torch.int32),
        seq_lens=torch.tensor([9, 4, 3, 12], dtype=torch.int32),
        state_indices_tensor=torch.tensor([3, 1, 7, 2], dtype=torch.int32),
    )


def test_prefill_bounds_start_at_the_first_prefill_token():
    from vllm_neuronchip.model_executor.gla_backend import prefill_bounds

    cu_seqlens, has_context = prefill_bounds(two_decodes_two_prefills())
    assert cu_seqlens.dtype == torch.int64 and cu_seqlens.tolist() == [0, 3, 8]
    assert has_context.tolist() == [False, True]


def test_every_gla_layer_of_a_step_hands_fla_the_same_bounds_tensors(monkeypatch):
    """fla caches its host-synchronising index helpers by tensor identity: the layers must not rebuild them."""
    from types import SimpleNamespace

    from vllm_neuronchip.model_executor import gla_layer
    from vllm_neuronchip.model_executor.gla_backend import prefill_bounds

    metadata = two_decodes_two_prefills()
    metadata.prefill_cu_seqlens, metadata.prefill_has_context = prefill_bounds(metadata)
    metadata.decode_has_state = metadata.seq_lens[:2] > 1
    seen = []

    def fake_varlen(q, k, v, g, *, cu_seqlens, has_initial_state, **_):
        seen.append((cu_seqlens, has_initial_state))
        return torch.zeros(q.shape)

    monkeypatch.setattr(gla_layer, "gla_varlen", fake_varlen)
    monkeypatch.setattr(gla_layer, "gla_decode", lambda q, *a, out, **kw: out.zero_())
    layer = SimpleNamespace(kv_cache=[torch.zeros(8, 1, 4, 4)], scale=0.5)
    q, k, v, g = (torch.randn(10, 1, 4) for _ in range(4))
    for _ in range(3):  # three layers, one step
        gla_layer.GatedLinearAttention._recurrence(layer, q, k, v, g, metadata, torch.empty(10, 1, 4))
    assert all(c is metadata.prefill_cu_seqlens and h is metadata.prefill_has_context for c, h in seen)
    assert len(seen) == 3
