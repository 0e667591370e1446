"""vLLM serves tiny W8ASpike checkpoints (released layout, detected from tensor names; compact layout,
from quantization_config) identically to the fp64 W8ASpike reference; the spike path equals the
integer path bit for bit; malformed checkpoints fail naming the tensor.

Spike rounding is discontinuous (spec D11): tokens must equal the reference wherever the reference is
stable under tiny input noise; a difference is accepted only where the reference itself flips.
"""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model.test_matches_reference import free_llm, generate, make_llm, random_prompt
from vllm_neuronchip.model_executor.checkpoint import CheckpointMismatchError
from vllm_neuronchip.quantization.checkpoint import full_rank, save_w8aspike_checkpoint
from vllm_neuronchip.quantization.reference import w8aspike_reference_greedy, w8aspike_reference_logits
from vllm_neuronchip.quantization.spike_linear import EmulatedSpikeBackend
from vllm_neuronchip.quantization.spike_recorder import RECORDER, spike_stats_snapshot
from vllm_neuronchip.quantization.w8aspike import W8ASpikeConfig, set_spike_backend
from vllm_neuronchip.settings import get_settings
from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint

PROMPT_LENGTHS = (1, 7, 40, 150)
LOGPROB_TOL = 1e-3


def serve(directory, prompts, **overrides):
    """(outputs, quant config, the worker's per-layer spike statistics)."""
    llm = make_llm(directory, **overrides)
    try:
        llm.collective_rpc(lambda worker: RECORDER.reset())
        outputs = generate(llm, prompts, prompt_logprobs=False)
        (stats,) = llm.collective_rpc(spike_stats_snapshot)
        return outputs, llm.llm_engine.vllm_config.quant_config, stats
    finally:
        free_llm(llm)


@pytest.fixture(scope="module", params=["released", "compact"])
def w8aspike_checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"w8aspike-{request.param}")
    spec = TinySpec()
    tensors = save_w8aspike_checkpoint(directory, spec, request.param, shards=2)
    return request.param, directory, tensors, full_rank(spec.config())


def reference_is_unstable(ids: list[int], tensors, config, trials: int = 16, noise: float = 3e-7) -> bool:
    """Spec D11: does the reference's next greedy token change under tiny relative noise on the embeddings?"""
    generator = torch.Generator().manual_seed(0)
    embeddings = tensors["model.embeddings.weight"]
    choices = set()
    for _ in range(trials):
        jitter = 1 + noise * torch.randn(embeddings.shape, generator=generator, dtype=torch.float64)
        noisy = tensors | {"model.embeddings.weight": embeddings.double() * jitter}
        choices.add(int(w8aspike_reference_logits(ids, noisy, config)[-1].argmax()))
    return len(choices) > 1


def assert_matches_where_stable(prompt, output, tensors, config, label: str) -> None:
    """Tokens equal the reference until the first step where they differ; a difference is accepted only
    where the reference itself flips under tiny noise (the rounding in spike counts is discontinuous),
    and nothing after it is compared since the contexts then differ."""
    tokens = list(output.outputs[0].token_ids)
    ref_tokens, ref_logprobs = w8aspike_reference_greedy(prompt, tensors, config, len(tokens))
    for step, (token, ref_token) in enumerate(zip(tokens, ref_tokens)):
        if token != ref_token:
            assert reference_is_unstable(prompt + tokens[:step], tensors, config), (
                f"{label}, prompt of {len(prompt)}: vLLM {tokens} != reference {ref_tokens} at a stable step {step}"
            )
            return
        logprob = output.outputs[0].logprobs[step][token].logprob
        assert math.isclose(logprob, float(ref_logprobs[step][token]), abs_tol=LOGPROB_TOL), (label, step)


def test_served_tokens_match_w8aspike_reference(w8aspike_checkpoint):
    layout, directory, tensors, config = w8aspike_checkpoint
    prompts = [random_prompt(n, seed=n) for n in PROMPT_LENGTHS]
    outputs, quant, _ = serve(directory, prompts)
    assert quant.get_name() == "w8aspike" and quant.layout == layout
    for prompt, output in zip(prompts, outputs):
        assert_matches_where_stable(prompt, output, tensors, config, layout)


def test_compiled_engine_matches_w8aspike_reference(w8aspike_checkpoint):
    """With torch.compile on, the W8ASpike linear stays an opaque op (kernels, settings, spike recorder)."""
    layout, directory, tensors, config = w8aspike_checkpoint
    if layout != "released":
        pytest.skip("the layouts differ only in loading, covered above")
    prompts = [random_prompt(n, seed=n) for n in (7, 40)]
    outputs, _, stats = serve(directory, prompts, enforce_eager=False)
    for prompt, output in zip(prompts, outputs):
        assert_matches_where_stable(prompt, output, tensors, config, "compiled")
    assert stats["total"]["spike_events"] > 0


class CountingBackend(EmulatedSpikeBackend):
    """A stand-in spike device: the emulator, counting the GEMMs routed to it."""

    calls = 0

    def accumulate(self, spike_counts, codes):
        CountingBackend.calls += 1
        return super().accumulate(spike_counts, codes)


def test_spike_path_equals_integer_path(w8aspike_checkpoint, monkeypatch):
    _, directory, _, _ = w8aspike_checkpoint
    prompts = [random_prompt(n, seed=n) for n in (7, 40)]
    integer, _, _ = serve(directory, prompts)
    monkeypatch.setenv("NEURONCHIP_W8ASPIKE_PATH", "spike")
    get_settings.cache_clear()
    set_spike_backend(CountingBackend())
    try:
        spike, _, _ = serve(directory, prompts)
    finally:
        set_spike_backend(EmulatedSpikeBackend())
        monkeypatch.delenv("NEURONCHIP_W8ASPIKE_PATH")
        get_settings.cache_clear()
    assert CountingBackend.calls > 0
    for a, b in zip(integer, spike):
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
        assert [lp[t].logprob for lp, t in zip(a.outputs[0].logprobs, a.outputs[0].token_ids)] == [
            lp[t].logprob for lp, t in zip(b.outputs[0].logprobs, b.outputs[0].token_ids)
        ]


def test_spike_statistics_per_layer(w8aspike_checkpoint):
    _, directory, _, config = w8aspike_checkpoint
    _, _, stats = serve(directory, [random_prompt(50, seed=3)])
    layers = {name for name in stats if name != "total"}
    assert "model.layers.0.attn.qkv_proj" in layers and "model.layers.1.mlp.gate_up_proj" in layers
    assert not any(name.endswith("down_proj") for name in layers)  # float in W8ASpike (D7)
    total = stats["total"]
    assert total["spike_events"] == sum(stats[n]["spike_events"] for n in layers) > 0
    assert total["values"] == sum(sum(stats[n]["histogram"]) for n in layers)
    assert 0 < total["silent_fraction"] < 1 and 0 < total["sparsity"] < 1 and total["spikes_per_channel"] > 0
    qkv = stats["model.layers.0.attn.qkv_proj"]
    fan_out = (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim
    assert qkv["synaptic_ops"] == qkv["spike_events"] * fan_out


def rewrite(directory, change):
    for file in sorted(directory.glob("model*.safetensors")):
        tensors = load_file(file)
        change(tensors)
        save_file(tensors, file, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing scales", r"missing.*'model\.layers\.0\.attn\.q_proj\.weight_quantizer\.scales'"),
        ("wrong group size", r"'model\.layers\.0\.attn\.q_proj\.weight_quantizer\.scales' has shape \(128, 2, 1\)"),
        ("weight shape", r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape \(255, 128\)"),
    ],
)
def test_malformed_released_checkpoint_fails_naming_the_tensor(tmp_path, breakage, message):
    save_w8aspike_checkpoint(tmp_path, TinySpec(), "released", shards=2)
    scales = "model.layers.0.attn.q_proj.weight_quantizer.scales"

    def change(tensors):
        if breakage == "missing scales":
            tensors.pop(scales, None)
        elif breakage == "wrong group size" and scales in tensors:
            tensors[scales] = torch.ones(128, 2, 1)
        elif breakage == "weight shape" and "model.layers.1.mlp.up_proj.weight" in tensors:
            tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(255, 128)

    rewrite(tmp_path, change)
    with pytest.raises(CheckpointMismatchError, match=message):
        make_llm(tmp_path)


def test_float_checkpoint_with_a_low_rank_gate_is_refused(tmp_path):
    """`--quantization w8aspike` on a float checkpoint: its low-rank gate runs inside a float qkv_proj."""
    save_checkpoint(tmp_path, TinySpec())
    with pytest.raises(ValueError, match=r"model\.layers\.0\.attn: a low-rank GLA gate needs a float qkv_proj"):
        make_llm(tmp_path, quantization="w8aspike")


@pytest.mark.parametrize("spike_down_proj", [False, True])
def test_down_proj_is_quantized_only_when_opted_in(spike_down_proj):
    """Spec D7: q/k/v/o, the full-rank gate and gate/up are W8ASpike; down_proj only with `spike_down_proj`
    in the quantization_config; a low-rank gate never."""
    config = W8ASpikeConfig.from_config({"quant_method": "w8aspike", "spike_down_proj": spike_down_proj})
    for name in ("self_attn.qkv_proj", "self_attn.o_proj", "self_attn.gk_proj", "mlp.gate_up_proj"):
        assert config.is_quantized(f"model.layers.0.{name}")
    assert config.is_quantized("model.layers.0.mlp.down_proj") == spike_down_proj
    assert not config.is_quantized("model.layers.0.self_attn.gk_proj.0")
