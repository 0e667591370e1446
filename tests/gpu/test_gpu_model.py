"""The model on a CUDA GPU (our Triton GLA prefill and decode kernels) equals the pure-torch reference at fp32,
eager and with CUDA graphs (vLLM's default FULL_AND_PIECEWISE); with CUDA graphs also through fla's chunk_gla
prefill (NEURONCHIP_GLA_PREFILL=fla); and in bf16 with CUDA graphs within bf16 noise of the reference (FlashAttention
and Triton attention for the sliding window). Every linear layer runs through our one-token GEMV there (its
single-token steps: the decodes of the prompts alone)."""

import pytest
from vllm.model_executor.layers.linear import LinearBase

from tests.model.test_bf16_matches_reference import check_bf16_engine
from tests.model.test_matches_reference import (
    MIXED_LENGTHS,
    assert_matches_reference,
    free_llm,
    generate,
    make_llm,
    random_prompt,
)
from vllm_neuronchip.model_executor.decode_gemv import DecodeGemvLinearMethod

pytestmark = pytest.mark.gpu


def linear_methods(model) -> list[type]:
    return [type(m.quant_method) for m in model.modules() if isinstance(m, LinearBase)]


@pytest.mark.parametrize("enforce_eager,gla_prefill", [(True, "triton"), (False, "triton"), (False, "fla")],
                         ids=["eager", "cuda-graphs", "cuda-graphs-fla-prefill"])
def test_gpu_matches_reference(tiny_checkpoint, enforce_eager, gla_prefill, neuronchip_env):
    directory, tensors, config = tiny_checkpoint
    neuronchip_env(GLA_PREFILL=gla_prefill, DECODE_GEMV="1")  # the engine runs in this process
    engine = make_llm(directory, enforce_eager=enforce_eager, kv_cache_memory_bytes=256 << 20)
    try:
        (methods,) = engine.apply_model(linear_methods)
        prompts = [random_prompt(n, seed=n) for n in MIXED_LENGTHS]
        batch = generate(engine, prompts)
        alone = [generate(engine, [random_prompt(n, seed=1000 + n)])[0] for n in (1, 40, 1)]
    finally:
        free_llm(engine)
    assert methods and all(method is DecodeGemvLinearMethod for method in methods), methods
    for prompt, output in zip(prompts, batch):
        assert_matches_reference(output, prompt, tensors, config)
    for n, output in zip((1, 40, 1), alone):
        assert_matches_reference(output, random_prompt(n, seed=1000 + n), tensors, config)


@pytest.mark.parametrize("attention", ["FLASH_ATTN", "TRITON_ATTN"])
def test_gpu_bf16_within_bf16_noise(tiny_checkpoint, neuronchip_env, attention):
    """Under both sliding-window backends vLLM may pick in bf16. Prompts of 1 and 2 tokens alone: on an H100
    (2026-12-07) their decodes left bf16 noise with FLASH_ATTN and CUDA graphs (not eager), the 40-token one did not."""
    neuronchip_env(DECODE_GEMV="1")
    check_bf16_engine(*tiny_checkpoint, alone=(1, 2, 40), enforce_eager=False, kv_cache_memory_bytes=256 << 20,
                      attention_config={"backend": attention})
