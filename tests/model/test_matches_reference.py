"""vLLM's greedy tokens and logprobs on tiny checkpoints equal the pure-torch reference (spec D1).

Covers prompts shorter and longer than the window, a 1-token prompt, chunked prefill, a prefix-cache
hit, one batch mixing all of them, and preemption under a tiny KV budget.
"""

import math
import random

import pytest
import torch

from vllm_neuronchip.model_executor.reference import reference_greedy, reference_logits

MAX_TOKENS = 8
LOGPROB_TOL = 1e-3


def random_prompt(length: int, seed: int, vocab: int = 384) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.randrange(3, vocab) for _ in range(length)]


def make_llm(directory, **overrides):
    from vllm import LLM

    kwargs = dict(
        model=str(directory), dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=8,
        max_num_batched_tokens=64, enable_prefix_caching=True, kv_cache_memory_bytes=64 << 20,
        disable_log_stats=False, seed=0,
        gpu_memory_utilization=0.3,  # GPU: room for other engines on the same GPU (the cache size is fixed above)
    )
    return LLM(**(kwargs | overrides))


def free_llm(llm) -> None:
    from vllm.distributed import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    del llm
    cleanup_dist_env_and_memory()


def generate(llm, prompts: list[list[int]], prompt_logprobs: bool = True, max_tokens: int = MAX_TOKENS):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, logprobs=0, prompt_logprobs=0 if prompt_logprobs else None,
        ignore_eos=True,
    )
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


def assert_matches_reference(output, prompt, tensors, config, check_prompt_logprobs=True):
    ref_tokens, ref_logprobs = reference_greedy(prompt, tensors, config, len(output.outputs[0].token_ids))
    got = list(output.outputs[0].token_ids)
    assert got == ref_tokens, f"prompt of {len(prompt)} tokens: vLLM {got} != reference {ref_tokens}"
    for step, (token, logprobs) in enumerate(zip(got, output.outputs[0].logprobs)):
        expected = float(ref_logprobs[step][token])
        assert math.isclose(logprobs[token].logprob, expected, abs_tol=LOGPROB_TOL), (len(prompt), step)
    if check_prompt_logprobs and len(prompt) > 1:
        ref = torch.log_softmax(reference_logits(prompt, tensors, config), -1)
        for position in range(1, len(prompt)):
            got_lp = output.prompt_logprobs[position][prompt[position]].logprob
            expected = float(ref[position - 1, prompt[position]])
            assert math.isclose(got_lp, expected, abs_tol=LOGPROB_TOL), (len(prompt), position)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    engine = make_llm(tiny_checkpoint[0])
    yield engine
    free_llm(engine)


# window is 32 tokens (33 keys); max_num_batched_tokens 64 chunks every prompt longer than 64.
MIXED_LENGTHS = (1, 5, 31, 33, 40, 100, 200)


def test_mixed_batch_matches_reference(llm, tiny_checkpoint):
    _, tensors, config = tiny_checkpoint
    prompts = [random_prompt(n, seed=n) for n in MIXED_LENGTHS]
    for prompt, output in zip(prompts, generate(llm, prompts)):
        assert_matches_reference(output, prompt, tensors, config)


def test_each_prompt_alone_matches_reference(llm, tiny_checkpoint):
    """Run after the mixed batch, so slots hold other requests' states (stale-state pitfall)."""
    _, tensors, config = tiny_checkpoint
    for n in (1, 1, 40, 1):
        prompt = random_prompt(n, seed=1000 + n)
        (output,) = generate(llm, [prompt])
        assert_matches_reference(output, prompt, tensors, config)


def gate_fusion_layout(model) -> list[tuple[bool, bool]]:
    """Per GLA layer: (qkv_proj's weight is the joint weight's first rows, gk_proj.0's its last rows)."""
    layers = [m for m in model.modules() if hasattr(m, "qkv_gate_weight")]
    assert layers
    layout = []
    for layer in layers:
        joint, qkv, gate_down = layer.qkv_gate_weight, layer.qkv_proj.weight, layer.gk_proj[0].weight
        layout.append((
            joint is not None and qkv.data_ptr() == joint.data_ptr(),
            joint is not None and gate_down.data_ptr() == joint[qkv.shape[0]:].data_ptr(),
        ))
    return layout


def test_gate_down_projection_runs_inside_qkv(llm):
    """The tests above then check the joint GEMM's outputs against the reference."""
    (layout,) = llm.apply_model(gate_fusion_layout)
    assert all(qkv and gate for qkv, gate in layout), layout


def test_prefix_cache_hit_matches_reference(llm, tiny_checkpoint):
    _, tensors, config = tiny_checkpoint
    shared = random_prompt(160, seed=7)
    first, second = shared + random_prompt(20, seed=8), shared + random_prompt(30, seed=9)
    generate(llm, [first], prompt_logprobs=False)
    (output,) = generate(llm, [second], prompt_logprobs=False)
    assert output.num_cached_tokens and output.num_cached_tokens >= 64, output.num_cached_tokens
    assert_matches_reference(output, second, tensors, config, check_prompt_logprobs=False)


def preemption_count(llm) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def test_preemption_recomputes_state(tmp_path):
    """A window longer than the prompts makes decodes grow their KV blocks; a tight budget then
    forces vLLM to preempt and later re-prefill requests, rebuilding their GLA states."""
    from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint

    spec = TinySpec(sliding_window=256, seed=1)
    tensors = save_checkpoint(tmp_path, spec)
    engine = make_llm(
        tmp_path, kv_cache_memory_bytes=512 << 10, block_size=32, enable_prefix_caching=False,
    )
    try:
        prompts = [random_prompt(n, seed=500 + n) for n in range(60, 140, 10)]
        outputs = generate(engine, prompts, prompt_logprobs=False, max_tokens=64)
        assert preemption_count(engine) > 0, "the KV budget was meant to force preemption"
    finally:
        free_llm(engine)
    for prompt, output in zip(prompts, outputs):
        assert_matches_reference(output, prompt, tensors, spec.config(), check_prompt_logprobs=False)


def test_context_beyond_max_position_embeddings_needs_no_override(tmp_path, monkeypatch):
    """max_position_embeddings is 512 here; a 700-token prompt is served without VLLM_ALLOW_LONG_MAX_MODEL_LEN."""
    from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint

    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    spec = TinySpec(max_position_embeddings=512, seed=2)
    tensors = save_checkpoint(tmp_path, spec)
    engine = make_llm(tmp_path, max_model_len=1024, enable_prefix_caching=False)
    try:
        assert engine.llm_engine.vllm_config.model_config.max_model_len == 1024
        prompt = random_prompt(700, seed=700)
        (output,) = generate(engine, [prompt], prompt_logprobs=False)
    finally:
        free_llm(engine)
    assert_matches_reference(output, prompt, tensors, spec.config(), check_prompt_logprobs=False)


def test_compiled_model_matches_reference(tiny_checkpoint):
    """vLLM's default torch.compile: projections and norms compiled, the GLA recurrence an opaque op.
    Kept after the tests sharing the module's engine: freeing an in-process engine tears down the
    process's distributed state, which that engine still needs."""
    directory, tensors, config = tiny_checkpoint
    engine = make_llm(directory, enforce_eager=False)
    try:
        prompts = [random_prompt(n, seed=n) for n in (1, 33, 100)]
        outputs = generate(engine, prompts)
    finally:
        free_llm(engine)
    for prompt, output in zip(prompts, outputs):
        assert_matches_reference(output, prompt, tensors, config)
