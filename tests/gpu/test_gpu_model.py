"""The model on a CUDA GPU (fla chunk prefill, Triton decode) equals the pure-torch reference at fp32,
eager and with CUDA graphs (vLLM's default FULL_AND_PIECEWISE)."""

import pytest

from tests.model.test_matches_reference import (
    MIXED_LENGTHS,
    assert_matches_reference,
    free_llm,
    generate,
    make_llm,
    random_prompt,
)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "cuda-graphs"])
def test_gpu_matches_reference(tiny_checkpoint, enforce_eager):
    directory, tensors, config = tiny_checkpoint
    engine = make_llm(directory, enforce_eager=enforce_eager, kv_cache_memory_bytes=256 << 20)
    try:
        prompts = [random_prompt(n, seed=n) for n in MIXED_LENGTHS]
        batch = generate(engine, prompts)
        alone = [generate(engine, [random_prompt(n, seed=1000 + n)])[0] for n in (1, 40, 1)]
    finally:
        free_llm(engine)
    for prompt, output in zip(prompts, batch):
        assert_matches_reference(output, prompt, tensors, config)
    for n, output in zip((1, 40, 1), alone):
        assert_matches_reference(output, random_prompt(n, seed=1000 + n), tensors, config)
