"""`--load-format dummy` with W8ASpike: synthetic codes and scales with the real checkpoint's statistics
(~1% of codes beyond ±127, scales ~1e-3), not the dummy loader's tiny floats, so benchmarks see real overflow."""

import pytest
import torch

from tests.model.test_matches_reference import (
    free_llm,
    generate,
    make_llm,
    random_prompt,
)
from vllm_neuronchip.quantization.checkpoint import save_w8aspike_checkpoint
from vllm_neuronchip.quantization.w8aspike import W8ASpikeLinearMethod, synthetic_codes
from vllm_neuronchip.tiny_checkpoint import TinySpec


def code_statistics(model: torch.nn.Module) -> dict:
    """Over the W8ASpike layers: code count, codes beyond ±127 and the scales' range."""
    codes = overflow = 0
    low, high = float("inf"), 0.0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, W8ASpikeLinearMethod):
            assert method.dummy_weights
            exact = method.weight_codes_of(module).exact()
            codes += exact.numel()
            overflow += int((exact.abs() > 127).sum())
            low, high = min(low, float(module.weight_scale.min())), max(high, float(module.weight_scale.max()))
    return {"codes": codes, "overflow": overflow, "scale_min": low, "scale_max": high}


@pytest.mark.parametrize("layout", ["released", "compact"])
def test_dummy_load_gives_realistic_codes(tmp_path, layout):
    save_w8aspike_checkpoint(tmp_path, TinySpec(), layout)
    llm = make_llm(tmp_path, load_format="dummy")
    try:
        (stats,) = llm.apply_model(code_statistics)
        outputs = generate(llm, [random_prompt(5, seed=1)], prompt_logprobs=False, max_tokens=2)
    finally:
        free_llm(llm)
    assert stats["codes"] > 100_000
    assert 0.008 < stats["overflow"] / stats["codes"] < 0.012, stats
    assert 1e-3 <= stats["scale_min"] and stats["scale_max"] < 1.1e-3
    assert len(outputs[0].outputs[0].token_ids) == 2


def test_synthetic_codes_are_seeded_per_layer():
    a, scales = synthetic_codes((64, 256), "model.layers.0.attn.qkv_proj", "cpu")
    b, _ = synthetic_codes((64, 256), "model.layers.0.attn.qkv_proj", "cpu")
    c, _ = synthetic_codes((64, 256), "model.layers.1.attn.qkv_proj", "cpu")
    assert a.dtype == torch.int32 and scales.shape == (64, 2) and scales.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
