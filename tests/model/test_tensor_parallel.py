"""Tensor parallelism: at TP=2 (two worker processes, heads, KV heads and GLA states sharded) a tiny
checkpoint gives the reference's greedy tokens and logprobs, as TP=1 does; on CPU, and on two GPUs."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.model.test_matches_reference import LOGPROB_TOL, MAX_TOKENS, generate, make_llm, random_prompt
from vllm_neuronchip.model_executor.reference import reference_greedy
from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint

TP_SPEC = TinySpec(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512, seed=5)
PROMPT_LENGTHS = (1, 7, 40, 150)
RESULT = "TP2-RESULT "


def check_tp2_matches_reference(directory, env_overrides: dict[str, str], enforce_eager: bool = True) -> None:
    tensors = save_checkpoint(directory, TP_SPEC)
    # The multi-process executor TP needs.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env |= {"PYTHONPATH": os.pathsep.join([root, env.get("PYTHONPATH", "")])} | env_overrides
    try:
        run = subprocess.run(
            [sys.executable, __file__, str(directory), str(enforce_eager)], env=env, capture_output=True, text=True, timeout=400
        )
    except subprocess.TimeoutExpired as timeout:
        output = b"".join((timeout.stdout or b"", timeout.stderr or b"")).decode(errors="replace")  # bytes always
        pytest.fail(f"TP=2 engine did not finish in {timeout.timeout} s:\n{output[-4000:]}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(next(line for line in run.stdout.splitlines() if line.startswith(RESULT))[len(RESULT):])
    for n, (tokens, logprobs) in zip(PROMPT_LENGTHS, results):
        ref_tokens, ref_logprobs = reference_greedy(random_prompt(n, seed=n), tensors, TP_SPEC.config(), MAX_TOKENS)
        assert tokens == ref_tokens, f"TP=2, prompt of {n}: {tokens} != reference {ref_tokens}"
        for step, (token, logprob) in enumerate(zip(tokens, logprobs)):
            assert math.isclose(logprob, float(ref_logprobs[step][token]), abs_tol=LOGPROB_TOL)


def test_tp2_matches_reference(tmp_path):
    check_tp2_matches_reference(tmp_path, {"VLLM_CPU_OMP_THREADS_BIND": "0|1"})  # one core per rank


@pytest.mark.gpu
@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "cuda-graphs"])
def test_tp2_on_two_gpus_matches_reference(tmp_path, enforce_eager):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    check_tp2_matches_reference(tmp_path, {}, enforce_eager)


def serve_tp2(directory: str, enforce_eager: bool) -> list:
    llm = make_llm(directory, tensor_parallel_size=2, max_num_seqs=4, enforce_eager=enforce_eager)
    outputs = generate(llm, [random_prompt(n, seed=n) for n in PROMPT_LENGTHS], prompt_logprobs=False)
    return [
        (list(o.outputs[0].token_ids), [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
        for o in outputs
    ]


if __name__ == "__main__":
    print(RESULT + json.dumps(serve_tp2(sys.argv[1], sys.argv[2] == "True")), flush=True)
