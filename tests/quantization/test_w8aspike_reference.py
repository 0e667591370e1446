"""W8ASpike reference: the rounding blocks on hand-computed values (spec D5-D7), the integer formula of §7.5,
the spike-train cross-check, and the model reference's wiring and layouts."""

import pytest
import torch

from vllm_neuronchip.model_executor.reference import reference_logits
from vllm_neuronchip.ops.spike import Encoding, spike_matmul, spike_quant
from vllm_neuronchip.quantization.checkpoint import full_rank, quant_linear_names, save_w8aspike_checkpoint
from vllm_neuronchip.quantization.reference import (
    GROUP_SIZE,
    integer_accumulations,
    is_spiked,
    kv_int8,
    spike_counts,
    spiked_linear,
    w8aspike_linear,
    w8aspike_reference_greedy,
    w8aspike_reference_logits,
    w8aspike_swa_qkv,
    weight_codes,
)
from vllm_neuronchip.tiny_checkpoint import TinySpec

PROMPT = [5, 17, 42, 99, 3, 250, 31, 7, 64, 128, 11, 300, 45, 8, 90, 201]


def f32(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---- spike_counts -------------------------------------------------------------------------------------------


def test_spike_counts_rounds_half_to_even_without_clamp():
    x = f32(0.5, 1.5, 2.5, -8.5, 2.0, 3.0)  # mean|x| = 3, so vth = 1 with k = 3
    s, vth = spike_counts(x[None])
    assert s.dtype == torch.int32 and vth.dtype == torch.float32 and vth.shape == (1, 1)
    assert vth.item() == 1.0
    assert s[0].tolist() == [0, 2, 2, -8, 2, 3]


def test_spike_counts_beyond_127_are_kept():
    x = torch.zeros(1, GROUP_SIZE)
    x[0, 0] = 7.0  # mean|x| = 7/128, vth = 7/384: s = 384
    s, _ = spike_counts(x)
    assert s[0, 0].item() == 3 * GROUP_SIZE and s[0, 1:].eq(0).all()


def test_spike_counts_per_row_and_k():
    x = torch.stack([f32(1.0, -3.0, 2.0, 6.0), 10 * f32(1.0, -3.0, 2.0, 6.0)])  # mean|x| = 3 and 30
    s, vth = spike_counts(x, k=1.5)
    assert vth.flatten().tolist() == [2.0, 20.0]
    assert s.tolist() == [[0, -2, 1, 3], [0, -2, 1, 3]]  # 0.5 -> 0, -1.5 -> -2 (half to even)
    with pytest.raises(ValueError, match="k must be positive"):
        spike_counts(x, k=0.0)


@pytest.mark.parametrize(
    ("value", "vth", "s"),
    [
        (0.0, 1e-5, 0),  # all-zero row: vth clamped up, s = 0
        (3e-5, 1e-5, 3),  # mean/3 = 1e-5 * 1: clamp boundary
        (2e-5, 1e-5, 2),  # mean/3 below 1e-5: clamped
        (6e4, 1e4, 6),  # mean/3 = 2e4 above 1e4: clamped down, s = 6
    ],
)
def test_spike_counts_vth_clamp(value, vth, s):
    got_s, got_vth = spike_counts(torch.full((1, 8), value))
    assert got_vth.item() == torch.tensor(vth, dtype=torch.float32).item()
    assert got_s.eq(s).all()


def test_spike_counts_computes_in_float32():
    x = torch.randn(4, 256, dtype=torch.float64)
    for cast in (x, x.to(torch.bfloat16)):
        s, vth = spike_counts(cast)
        s32, vth32 = spike_counts(cast.float())
        assert torch.equal(s, s32) and torch.equal(vth, vth32)


# ---- weight_codes -------------------------------------------------------------------------------------------


def test_weight_codes_half_to_even_per_group_no_clamp():
    weight = torch.zeros(2, 2 * GROUP_SIZE)
    weight[0, :5] = f32(0.5, 1.5, 2.5, -2.5, 200.0)  # group 0, σ = 1
    weight[0, GROUP_SIZE : GROUP_SIZE + 3] = f32(0.125, 0.375, 50.0)  # group 1, σ = 0.25
    weight[1, 0] = -300.0 * 0.5
    scales = f32(1.0, 0.25, 0.5, 0.5).view(2, 2)
    codes = weight_codes(weight, scales)
    assert codes.dtype == torch.int32
    assert codes[0, :5].tolist() == [0, 2, 2, -2, 200]
    assert codes[0, GROUP_SIZE : GROUP_SIZE + 3].tolist() == [0, 2, 200]
    assert codes[1, 0].item() == -300
    assert torch.equal(weight_codes(weight, scales[..., None]), codes)  # released shape [out, G, 1]


def test_weight_codes_refuses_non_float32_and_bad_groups():
    weight, scales = torch.randn(4, GROUP_SIZE), torch.ones(4, 1)
    with pytest.raises(TypeError, match="float32"):
        weight_codes(weight.bfloat16(), scales)
    with pytest.raises(TypeError, match="float32"):
        weight_codes(weight, scales.double())
    with pytest.raises(ValueError, match="multiple of the group size"):
        weight_codes(torch.randn(4, 100), scales)
    with pytest.raises(ValueError, match="do not fit"):
        weight_codes(weight, torch.ones(4, 2))


# ---- kv_int8 ------------------------------------------------------------------------------------------------


def test_kv_int8_rounds_and_clamps():
    codes, scale = kv_int8(f32(254.0, -127.0, 0.5, 1.5)[None])  # scale 2: [127, -63.5, 0.25, 0.75]
    assert codes.dtype == torch.int8 and scale.item() == 2.0
    assert codes[0].tolist() == [127, -64, 0, 1]
    codes, scale = kv_int8(f32(2e6, -2e6, 2.5e4, 0.0)[None])  # scale clamped to 1e4: ±200 -> 127 / -128
    assert scale.item() == 1e4
    assert codes[0].tolist() == [127, -128, 2, 0]
    codes, scale = kv_int8(torch.zeros(2, 3))
    assert codes.eq(0).all() and scale.eq(torch.tensor(1e-5)).all()


# ---- the integer formula (§7.5) and spike trains ------------------------------------------------------------


def random_linear(seed: int, rows=5, out=24, groups=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, groups * GROUP_SIZE, generator=g)
    x[0, 7] = 40.0  # an outlier activation: |s| far beyond 127
    weight = torch.randn(out, groups * GROUP_SIZE, generator=g)
    scales = weight.view(out, groups, GROUP_SIZE).abs().amax(-1) / 120
    weight[1, 3] = 180 * scales[1, 0]  # a code beyond 127
    return x, weight, scales, torch.randn(out, generator=g)


def test_integer_formula_equals_dequantized_gemm():
    x, weight, scales, bias = random_linear(0)
    codes = weight_codes(weight, scales)
    assert codes.abs().max() > 127
    y = spiked_linear(x, codes, scales, bias)
    s, vth = spike_counts(x)
    assert s.abs().max() > 127
    dequantized = (codes.double().view(24, 3, GROUP_SIZE) * scales.double()[..., None]).view(24, -1)
    fp64 = (s.double() * vth.double()) @ dequantized.T + bias.double()
    torch.testing.assert_close(y, fp64, rtol=1e-12, atol=1e-12)
    fp32 = (s.float() * vth) @ dequantized.float().T + bias  # the original fake-quant GEMM, float32
    torch.testing.assert_close(y.float(), fp32, rtol=1e-5, atol=1e-4)


def test_integer_accumulations_are_exact_group_dot_products():
    s = torch.tensor([[1, -2] + [0] * 126 + [3] + [0] * 127], dtype=torch.int32)
    codes = torch.zeros(1, 2 * GROUP_SIZE, dtype=torch.int32)
    codes[0, :2] = torch.tensor([200, 7])
    codes[0, GROUP_SIZE] = -300
    acc = integer_accumulations(s, codes)
    assert acc.dtype == torch.int64 and acc.tolist() == [[[200 - 14, -900]]]


@pytest.mark.parametrize("nonnegative", [False, True])
def test_bitwise_bidirectional_spike_trains_give_the_integer_accumulations(nonnegative):
    x, weight, scales, _ = random_linear(1)
    if nonnegative:  # like a ReLU output: spike_quant then offsets x by x_zero
        x = x.abs()
    s, _ = spike_counts(x)
    codes = weight_codes(weight, scales)
    acc = integer_accumulations(s, codes)
    for g in range(acc.shape[-1]):
        s_g = s[:, g * GROUP_SIZE : (g + 1) * GROUP_SIZE]
        c_g = codes[:, g * GROUP_SIZE : (g + 1) * GROUP_SIZE].T.double()
        train = spike_matmul(s_g, c_g, Encoding.BITWISE_BIDIRECTIONAL)  # (s + x_zero) @ c, T steps
        x_zero = spike_quant(s_g, Encoding.BITWISE_BIDIRECTIONAL).x_zero
        assert bool(x_zero.any()) == nonnegative
        assert torch.equal((train - x_zero.double() @ c_g).long(), acc[:, :, g])


# ---- the model reference ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w8aspike_models(tmp_path_factory):
    """(released tensors, compact tensors, config) of one tiny W8ASpike model."""
    spec = TinySpec()
    released = save_w8aspike_checkpoint(tmp_path_factory.mktemp("released"), spec, "released")
    compact = save_w8aspike_checkpoint(tmp_path_factory.mktemp("compact"), spec, "compact")
    return released, compact, spec.config()


def test_spiked_linears_are_those_of_d7(w8aspike_models):
    released, _, config = w8aspike_models
    names = quant_linear_names(full_rank(config))
    assert [n for n in names if not is_spiked(n)] == [n for n in names if n.endswith("mlp.down_proj")]
    assert not is_spiked("model.layers.0.attn.gk_proj.0") and not is_spiked("lm_head")
    called = []
    hook = w8aspike_linear(released)
    reference_logits(PROMPT[:4], released, config, linear=lambda x, name: called.append(name) or hook(x, name))
    assert sorted(called) == sorted(names)


def test_layouts_give_identical_logits(w8aspike_models):
    released, compact, config = w8aspike_models
    assert torch.equal(
        w8aspike_reference_logits(PROMPT, released, config), w8aspike_reference_logits(PROMPT, compact, config)
    )


def test_fine_quantization_approaches_the_float_model(w8aspike_models):
    """Codes 1e4 times finer and k = 1e4: spiked linears approach float; SWA K/V stay 8 bit."""
    released, _, config = w8aspike_models
    fine = dict(released)
    for prefix in quant_linear_names(full_rank(config)):
        fine[prefix + ".weight_quantizer.scales"] = released[prefix + ".weight_quantizer.scales"] / 1e4
    float_logits = reference_logits(PROMPT, released, config)
    linears_only = reference_logits(PROMPT, fine, config, linear=w8aspike_linear(fine, k=1e4))
    assert (linears_only - float_logits).abs().max() < 5e-3
    qkv_only = reference_logits(PROMPT, released, config, swa_qkv=w8aspike_swa_qkv(k=1e4))
    w8aspike_k3 = w8aspike_reference_logits(PROMPT, released, config)
    assert 0 < (qkv_only - float_logits).abs().max() < 0.2 < (w8aspike_k3 - float_logits).abs().max()


def test_greedy_follows_the_logits(w8aspike_models):
    released, _, config = w8aspike_models
    tokens, logprobs = w8aspike_reference_greedy(PROMPT[:6], released, config, max_tokens=2, k=2.5)
    logits = w8aspike_reference_logits(PROMPT[:6] + tokens, released, config, k=2.5)
    assert tokens == [int(logits[5].argmax()), int(logits[6].argmax())]
    torch.testing.assert_close(logprobs[1], torch.log_softmax(logits[6], -1))
