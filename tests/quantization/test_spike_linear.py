"""W8ASpike execution paths: integer and spike accumulations are bit-identical; the float reference
agrees to float rounding (spec §7.5)."""

import pytest
import torch

from vllm_neuronchip.quantization.reference import integer_accumulations
from vllm_neuronchip.quantization.spike_linear import EmulatedSpikeBackend, ExecutionPath, spike_linear
from vllm_neuronchip.quantization.weight_codes import WeightCodes

GROUP = 128


def random_layer(tokens=5, in_features=256, out_features=48, seed=0, non_negative=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-40, 41, (tokens, in_features), generator=g, dtype=torch.int32)
    s[0, :7] = torch.tensor([462, -300, 0, 1, -1, 127, -128])  # unbounded spike counts (no clamp)
    if non_negative:
        s = s.abs()
    exact = torch.randint(-127, 128, (out_features, in_features), generator=g, dtype=torch.int32)
    exact[0, :3] = torch.tensor([194, -182, 250], dtype=torch.int32)  # codes beyond ±127 stay exact
    exact[5, 200] = -129
    codes = WeightCodes.from_exact(exact)
    vth = torch.rand(tokens, 1, generator=g) + 0.1
    scales = torch.rand(out_features, in_features // GROUP, generator=g) * 0.01
    bias = torch.randn(out_features, generator=g)
    return s, vth, codes, scales, bias


def test_int8_codes_with_overflow_accumulate_exactly():
    s, _, codes, _, _ = random_layer()
    assert codes.codes.dtype == torch.int8 and int((codes.ell_residual != 0).sum()) == 4 and codes.ell_cols.shape[1] == 3
    assert torch.equal(codes.accumulate(s).long(), integer_accumulations(s, codes.exact()))


@pytest.mark.parametrize("non_negative", [False, True], ids=["signed", "all-non-negative (x_zero)"])
def test_spike_backend_equals_integer_path_bit_for_bit(non_negative):
    s, vth, codes, scales, bias = random_layer(non_negative=non_negative)
    backend = EmulatedSpikeBackend()
    assert torch.equal(backend.accumulate(s, codes), integer_accumulations(s, codes.exact()))
    integer = spike_linear(s, vth, codes, scales, bias, path=ExecutionPath.INTEGER)
    spike = spike_linear(s, vth, codes, scales, bias, path=ExecutionPath.SPIKE, backend=backend)
    assert torch.equal(integer, spike)


def test_reference_path_agrees_to_float_rounding():
    s, vth, codes, scales, bias = random_layer(seed=1)
    integer = spike_linear(s, vth, codes, scales, bias, path=ExecutionPath.INTEGER)
    reference = spike_linear(s, vth, codes, scales, bias, path=ExecutionPath.REFERENCE)
    torch.testing.assert_close(reference, integer, rtol=1e-5, atol=1e-5 * integer.abs().max().item())
