"""Released checkpoint layouts load as they are; mismatches fail naming the tensor and both shapes."""

import json
import random

import pytest
import torch

from vllm_neuronchip.model_executor.checkpoint import (
    CheckpointMismatchError,
    checked_tensors,
    expected_tensor_shapes,
)
from vllm_neuronchip.model_executor.reference import reference_greedy
from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint

from .test_matches_reference import free_llm, generate, make_llm


def test_tiny_checkpoint_looks_released(tiny_checkpoint):
    directory, _, _ = tiny_checkpoint
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["GLAswaForCausalLM"] and config["model_type"] == "gla_swa"
    assert "auto_map" in config
    for derived in ("head_dim", "layer_types", "gate_low_rank_dim", "gate_logit_normalizer"):
        assert derived not in config
    assert (directory / "model.safetensors.index.json").exists()


def test_bin_shards_load_and_match_reference(tmp_path):
    spec = TinySpec(seed=3)
    tensors = save_checkpoint(tmp_path, spec, weight_format="bin", shards=3)
    assert len(list(tmp_path.glob("pytorch_model-*.bin"))) == 3
    prompt = [random.Random(3).randrange(3, 384) for _ in range(50)]
    llm = make_llm(tmp_path)
    try:
        (output,) = generate(llm, [prompt], prompt_logprobs=False)
    finally:
        free_llm(llm)
    assert list(output.outputs[0].token_ids) == reference_greedy(prompt, tensors, spec.config(), 8)[0]


class NotATensor:
    """Any pickled object that is not a tensor: `.bin` loading must refuse it, never run it."""


def test_bin_with_arbitrary_pickle_is_refused(tmp_path):
    tensors = save_checkpoint(tmp_path, TinySpec(), weight_format="bin")
    torch.save(tensors | {"payload": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        make_llm(tmp_path)


def test_misshaped_tensor_fails_engine_start_with_its_name(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(tmp_path, TinySpec())
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.attn.gk_proj.1.weight"] = torch.zeros(32, 16)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"'model\.layers\.0\.attn\.gk_proj\.1\.weight' has shape \(32, 16\).*\(64, 16\)"):
        make_llm(tmp_path)


@pytest.fixture
def expected():
    return expected_tensor_shapes(TinySpec().config())


def as_weights(expected):
    return [(name, torch.zeros(shape)) for name, shape in expected.items()]


def test_check_passes_a_complete_checkpoint(expected):
    assert [n for n, _ in checked_tensors(as_weights(expected), expected)] == list(expected)


def test_check_names_a_misshaped_tensor(expected):
    weights = as_weights(expected)
    weights[3] = (weights[3][0], torch.zeros(7, 7))
    with pytest.raises(CheckpointMismatchError, match=rf"{weights[3][0]}.*\(7, 7\).*{expected[weights[3][0]]}"):
        list(checked_tensors(weights, expected))


def test_check_names_an_unexpected_tensor(expected):
    weights = as_weights(expected) + [("model.layers.0.attn.gk_proj.weight", torch.zeros(64, 128))]
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensor 'model\.layers\.0\.attn\.gk_proj\.weight'"):
        list(checked_tensors(weights, expected))


def test_check_names_a_missing_tensor(expected):
    weights = [w for w in as_weights(expected) if w[0] != "lm_head.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing.*'lm_head\.weight'.*\(384, 128\)"):
        list(checked_tensors(weights, expected))


def test_ignores_saved_rotary_buffers(expected):
    weights = as_weights(expected) + [("model.layers.1.attn.rotary_emb.inv_freq", torch.zeros(32))]
    assert len(list(checked_tensors(weights, expected))) == len(expected)


def test_generation_stops_at_im_end_without_flags(tiny_checkpoint):
    """Spec D10: the checkpoint's generation_config names only <|endoftext|>; chat must stop at <|im_end|>."""
    from vllm import SamplingParams

    directory, _, _ = tiny_checkpoint
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == 0
    llm = make_llm(directory)
    try:
        model_config = llm.llm_engine.vllm_config.model_config
        params = SamplingParams()
        params.update_from_generation_config(model_config.try_get_generation_config(), eos_token_id=0)
    finally:
        free_llm(llm)
    assert 2 in params.stop_token_ids  # <|im_end|>
