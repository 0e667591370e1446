"""`vllm serve DIR` on tiny W8ASpike checkpoints, released layout (detected from tensor names) and
compact layout, with no quantization flag: completions equal the fp64 W8ASpike reference."""

import random
import re
import time

import openai
import pytest
import requests

from tests.server.serving import running_server
from vllm_neuronchip.quantization.checkpoint import full_rank, save_w8aspike_checkpoint
from vllm_neuronchip.quantization.reference import w8aspike_reference_greedy
from vllm_neuronchip.tiny_checkpoint import TinySpec

pytestmark = pytest.mark.server

MAX_TOKENS = 8


@pytest.mark.parametrize("layout", ["released", "compact"])
def test_served_w8aspike_completion_matches_reference(layout, tmp_path_factory, request):
    directory = tmp_path_factory.mktemp(f"w8aspike-{layout}")
    spec = TinySpec(seed=4)
    tensors = save_w8aspike_checkpoint(directory, spec, layout)
    prompt = [random.Random(4).randrange(3, spec.vocab_size) for _ in range(30)]
    with running_server(directory, "w8aspike-tiny", 256, tmp_path_factory, request) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        choice = client.completions.create(
            model="w8aspike-tiny", prompt=[prompt], temperature=0, max_tokens=MAX_TOKENS,
            extra_body={"ignore_eos": True, "return_token_ids": True},
        ).choices[0]
    expected, _ = w8aspike_reference_greedy(prompt, tensors, full_rank(spec.config()), MAX_TOKENS)
    assert choice.token_ids == expected, f"{layout}: server {choice.token_ids} != reference {expected}"


def test_spike_statistics_reach_prometheus_metrics(tmp_path_factory, request):
    directory = tmp_path_factory.mktemp("w8aspike-metrics")
    spec = TinySpec(seed=4)
    save_w8aspike_checkpoint(directory, spec, "compact")
    with running_server(directory, "w8aspike-tiny", 256, tmp_path_factory, request) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for _ in range(2):  # workers publish at most once a second: the second request flushes the first
            client.completions.create(model="w8aspike-tiny", prompt="Spiking neurons", max_tokens=4)
            time.sleep(1.2)
        metrics = requests.get(f"{url}/metrics", timeout=10).text
    total = re.search(r'^neuronchip:spike_events_total\{layer="total",worker="[^"]+"\} (\S+)$', metrics, re.M)
    assert total and float(total.group(1)) > 0, metrics[-2000:]
    assert re.search(r'^neuronchip:sparsity\{layer="model\.layers\.0\.attn\.qkv_proj"', metrics, re.M)
