"""vLLM's OpenAI-compatible server on the tiny checkpoint: models, completions, chat, metrics, bad input.

One `vllm serve` subprocess (default multi-process engine) serves every test in this module.
"""

import math
import random
import re

import openai
import pytest
import requests

from tests.server.serving import running_server
from vllm_neuronchip.model_executor.reference import reference_greedy

pytestmark = pytest.mark.server

MODEL = "spikingbrain-tiny-test"
MAX_MODEL_LEN = 256
MAX_TOKENS = 8
LOGPROB_TOL = 1e-3
GREEDY = dict(temperature=0, max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True, "return_token_ids": True})
CHAT = [{"role": "user", "content": "Hello, world!"}]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory, request):
    """Base URL of a healthy server; prints its log tail if startup or any test of the module fails."""
    with running_server(tiny_checkpoint[0], MODEL, MAX_MODEL_LEN, tmp_path_factory, request) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint[0])


def assert_matches_reference(token_ids, prompt_ids, tiny_checkpoint, token_logprobs=None) -> None:
    _, tensors, config = tiny_checkpoint
    ref_ids, ref_logprobs = reference_greedy(prompt_ids, tensors, config, MAX_TOKENS)
    assert token_ids == ref_ids, f"server {token_ids} != reference {ref_ids}"
    for step, logprob in enumerate(token_logprobs or []):
        assert math.isclose(logprob, float(ref_logprobs[step][ref_ids[step]]), abs_tol=LOGPROB_TOL), step


def test_models_lists_served_name(client):
    assert MODEL in [model.id for model in client.models.list()]


def test_greedy_completion_matches_reference(client, tokenizer, tiny_checkpoint):
    rnd = random.Random(0)
    prompt_ids = [rnd.randrange(3, tokenizer.vocab_size) for _ in range(20)]
    choice = client.completions.create(model=MODEL, prompt=[prompt_ids], logprobs=1, **GREEDY).choices[0]
    assert choice.finish_reason == "length"
    assert choice.prompt_token_ids == prompt_ids
    assert len(choice.token_ids) == MAX_TOKENS
    assert choice.text == tokenizer.decode(choice.token_ids)
    assert_matches_reference(choice.token_ids, prompt_ids, tiny_checkpoint, choice.logprobs.token_logprobs)


def test_chat_streamed_equals_non_streamed_and_reference(client, tokenizer, tiny_checkpoint):
    answer = client.chat.completions.create(model=MODEL, messages=CHAT, **GREEDY)
    choice = answer.choices[0]
    assert choice.finish_reason == "length" and choice.message.content
    prompt_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert_matches_reference(choice.token_ids, list(prompt_ids), tiny_checkpoint)

    deltas, finish_reasons = [], []
    for chunk in client.chat.completions.create(model=MODEL, messages=CHAT, stream=True, **GREEDY):
        for streamed in chunk.choices:
            deltas.append(streamed.delta.content or "")
            finish_reasons.append(streamed.finish_reason)
    assert "".join(deltas) == choice.message.content
    assert [r for r in finish_reasons if r] == ["length"] and finish_reasons[-1] == "length"


def counter(metrics_text: str, name: str) -> float:
    match = re.search(rf'^{name}\{{[^}}]*model_name="{MODEL}"[^}}]*\}} (\S+)$', metrics_text, re.MULTILINE)
    assert match, f"no {name} with model_name={MODEL!r} in /metrics"
    return float(match.group(1))


def test_metrics_count_tokens(client, server):
    usage = client.completions.create(model=MODEL, prompt="Hello", **GREEDY).usage
    response = requests.get(f"{server}/metrics", timeout=10)
    assert response.status_code == 200
    assert counter(response.text, "vllm:prompt_tokens_total") >= usage.prompt_tokens > 0
    assert counter(response.text, "vllm:generation_tokens_total") >= usage.completion_tokens == MAX_TOKENS


# name: (fields overriding a valid request, phrase the 400 message must contain)
BAD_COMPLETIONS = {
    "prompt-too-long": (dict(prompt=[list(range(3, MAX_MODEL_LEN + 47))]), "maximum context length"),
    "empty-prompt": (dict(prompt=""), "must be provided and non-empty"),
    "out-of-vocab-id": (dict(prompt=[[5, 100000]]), "Token id 100000 is out of vocabulary"),
    "negative-temperature": (dict(temperature=-1), "temperature must be non-negative"),
    "top-p-above-1": (dict(top_p=2), "top_p must be in (0, 1]"),
    "zero-max-tokens": (dict(max_tokens=0), "max_tokens must be at least 1"),
    "negative-max-tokens": (dict(max_tokens=-1), "max_tokens must be at least 1"),
    "zero-n": (dict(n=0), "n must be at least 1"),
}
BAD_CHATS = {
    "no-messages": (dict(messages=[]), "empty conversation"),
    "chat-too-long": (dict(messages=[{"role": "user", "content": "Hello, world! " * 100}]), "maximum context length"),
}
# name: (raw body posted to /v1/completions, phrase the 400/422 message must contain)
BAD_BODIES = {"not-json": ("not json", "JSON decode error"), "json-array": ("[1, 2]", "valid dictionary")}


def rejection(create, fields: dict) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as error:
        create(**({"model": MODEL, "max_tokens": 4} | fields))
    return error.value


def post_raw(server: str, body: str) -> requests.Response:
    return requests.post(f"{server}/v1/completions", data=body, headers={"Content-Type": "application/json"}, timeout=10)


@pytest.mark.parametrize("fields, phrase", BAD_COMPLETIONS.values(), ids=BAD_COMPLETIONS)
def test_bad_completion_is_rejected(client, fields, phrase):
    error = rejection(client.completions.create, {"prompt": "Hello"} | fields)
    assert error.status_code == 400 and phrase in error.body["message"], error.body


@pytest.mark.parametrize("fields, phrase", BAD_CHATS.values(), ids=BAD_CHATS)
def test_bad_chat_is_rejected(client, fields, phrase):
    error = rejection(client.chat.completions.create, fields)
    assert error.status_code == 400 and phrase in error.body["message"], error.body


@pytest.mark.parametrize("body, phrase", BAD_BODIES.values(), ids=BAD_BODIES)
def test_malformed_body_is_rejected(server, body, phrase):
    response = post_raw(server, body)
    assert response.status_code in (400, 422) and phrase in response.json()["error"]["message"], response.text


def test_server_keeps_serving_after_bad_requests(client, server):
    for fields, _ in BAD_COMPLETIONS.values():
        rejection(client.completions.create, {"prompt": "Hello"} | fields)
    for fields, _ in BAD_CHATS.values():
        rejection(client.chat.completions.create, fields)
    for body, _ in BAD_BODIES.values():
        assert post_raw(server, body).status_code in (400, 422)
    choice = client.completions.create(model=MODEL, prompt="Hello", **GREEDY).choices[0]
    assert len(choice.token_ids) == MAX_TOKENS
    assert requests.get(f"{server}/health", timeout=10).status_code == 200
