"""The sliding-window layers' FlashAttention builder keeps the window in every call's schedule: max_seq_len raised to
window + 1 (max_model_len at most), nothing else changed; other backends are left alone. The fault it fixes shows on
a GPU only (tests/gpu/test_gpu_model.py, bf16 prompts of 1 and 2 tokens alone under FlashAttention)."""

import dataclasses
from types import SimpleNamespace

import pytest
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionMetadataBuilder

from vllm_neuronchip.model_executor.sliding_window_flash_attn import (
    SlidingWindowFlashAttentionBackend,
    SlidingWindowFlashAttentionMetadataBuilder,
    keep_window_in_schedule,
)


@dataclasses.dataclass
class Common:
    max_seq_len: int
    seq_lens: tuple = (1, 2)


@pytest.fixture
def scheduled(monkeypatch):
    """The metadata FlashAttention's own build receives, from a builder of window 33 and max_model_len 512."""
    monkeypatch.setattr(FlashAttentionMetadataBuilder, "build", lambda self, prefix, common, fast_build=False: common)

    def build(max_seq_len: int, window: int | None = 33, max_model_len: int = 512) -> Common:
        builder = object.__new__(SlidingWindowFlashAttentionMetadataBuilder)
        builder.kv_cache_spec = SimpleNamespace(sliding_window=window)
        builder.model_config = SimpleNamespace(max_model_len=max_model_len)
        return builder.build(0, Common(max_seq_len))

    return build


def test_short_batches_are_scheduled_with_the_window(scheduled):
    assert scheduled(2) == Common(34)  # FlashAttention keeps a window of 33 where max_seqlen_k > 33
    assert scheduled(33) == Common(34)
    assert scheduled(34) == Common(34) and scheduled(300) == Common(300)


def test_no_window_beyond_max_model_len_or_without_one(scheduled):
    assert scheduled(2, max_model_len=20) == Common(20)  # captured without the window: replays stay without it
    assert scheduled(2, window=None) == Common(2)


def test_only_flash_attention_is_swapped():
    flash, other = SimpleNamespace(attn_backend=FlashAttentionBackend), SimpleNamespace(attn_backend=object)
    keep_window_in_schedule(flash)
    keep_window_in_schedule(other)
    assert flash.attn_backend is SlidingWindowFlashAttentionBackend and other.attn_backend is object
    assert SlidingWindowFlashAttentionBackend.get_builder_cls() is SlidingWindowFlashAttentionMetadataBuilder
    assert SlidingWindowFlashAttentionBackend.get_name() == FlashAttentionBackend.get_name()
