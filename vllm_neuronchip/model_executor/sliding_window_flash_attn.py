"""FlashAttention for the sliding-window layers, its ahead-of-time schedule kept consistent with CUDA graphs.

FlashAttention 3 drops a sliding window that covers every key of the call (window_left >= max_seqlen_k - 1) and then
schedules and tiles it as plain causal attention. vLLM captures FULL CUDA graphs with max_seq_len = max_model_len
(window kept), but computes each replay's ahead-of-time scheduler metadata from the batch's real max_seq_len: a decode
batch whose sequences all fit inside the window replays the windowed kernel with a schedule made for the windowless
one. On an H100 the tiny bf16 model's 1-2 token prompts decoding alone came out logprobs 4-13 off the reference,
only with CUDA graphs (results/gpu/h100/session_2026-12-07_2200). vLLM keeps the schedule on only where all of a
model's windows are equal, which is this model's case.

This builder raises the max_seq_len it schedules and runs with to window + 1 (max_model_len at most, where the
capture itself has no window), so the window is dropped in no call or always. max_seq_len only bounds the
scheduling; each sequence's length still comes from seq_lens.
"""

import dataclasses

from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionMetadataBuilder


def max_seq_len_floor(sliding_window: int | None, max_model_len: int) -> int:
    """The smallest max_seq_len that keeps a window of `sliding_window` tokens (FlashAttention keeps it when
    max_seqlen_k > sliding_window), or max_model_len where the graphs were captured without it."""
    return 0 if sliding_window is None else min(sliding_window + 1, max_model_len)


class SlidingWindowFlashAttentionMetadataBuilder(FlashAttentionMetadataBuilder):
    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
        floor = max_seq_len_floor(getattr(self.kv_cache_spec, "sliding_window", None), self.model_config.max_model_len)
        if common_attn_metadata.max_seq_len < floor:
            common_attn_metadata = dataclasses.replace(common_attn_metadata, max_seq_len=floor)
        return super().build(common_prefix_len, common_attn_metadata, fast_build)


class SlidingWindowFlashAttentionBackend(FlashAttentionBackend):
    @staticmethod
    def get_builder_cls() -> type[SlidingWindowFlashAttentionMetadataBuilder]:
        return SlidingWindowFlashAttentionMetadataBuilder


def keep_window_in_schedule(attention) -> None:
    """Give a sliding-window `Attention` layer the builder above where vLLM chose FlashAttention (same kernels,
    same cache layout); any other backend stays as it is."""
    if attention.attn_backend is FlashAttentionBackend:
        attention.attn_backend = SlidingWindowFlashAttentionBackend
