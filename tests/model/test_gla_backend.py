"""GLA decode slots live in one persistent buffer (what a FULL CUDA graph replays), padded rows skipped."""

import torch
from vllm.v1.attention.backends.utils import PAD_SLOT_ID

from vllm_neuronchip.model_executor.gla_backend import GLABackend, GLAMetadataBuilder, persistent_decode_slots


def test_decode_slots_are_copied_into_the_same_buffer_with_padding_marked():
    buffer = torch.full((8,), PAD_SLOT_ID, dtype=torch.int32)
    first = persistent_decode_slots(buffer, torch.tensor([5, 9, 0, 0], dtype=torch.int32), torch.tensor([3, 7, 0, 0]))
    assert first.data_ptr() == buffer.data_ptr() and first.tolist() == [5, 9, PAD_SLOT_ID, PAD_SLOT_ID]
    gathered = torch.tensor([2, 4], dtype=torch.int32)  # a fresh tensor each step, as vLLM's 'align' gather
    second = persistent_decode_slots(buffer, gathered, torch.tensor([1, 12]))
    assert second.data_ptr() == buffer.data_ptr() and second.tolist() == [2, 4]


def test_gla_layers_use_the_persistent_slot_builder():
    from vllm_neuronchip.model_executor.gla_layer import GatedLinearAttention

    assert GatedLinearAttention.get_attn_backend(None) is GLABackend
    assert GLABackend.get_builder_cls() is GLAMetadataBuilder
