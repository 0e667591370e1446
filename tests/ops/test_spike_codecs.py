"""Int2Spike codecs: the exact spike trains of spec §8.3, then round-trip and matmul properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_neuronchip.ops.spike import (
    Encoding,
    encode_binary,
    encode_bitwise,
    encode_bitwise_bidirectional,
    encode_bitwise_twos_complement,
    encode_ternary,
    firing_rate,
    spike_dequant,
    spike_matmul,
    spike_quant,
    time_steps,
)


def trains(*rows: list[int]) -> torch.Tensor:
    """Expected spike train [T, len(rows)] from one row of T spikes per input value."""
    return torch.tensor(rows, dtype=torch.float32).T


# (encoder, x, explicit T, expected trains with one row per value of x); spec §8.3.
TABLE = [
    (encode_binary, [0, 1, 3, 5], None,
     trains([0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1])),
    (encode_binary, [3, 5], 8,
     trains([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0])),
    (encode_ternary, [-3, -1, 0, 2, 5], None,
     trains([-1, -1, -1, 0, 0], [-1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1])),
    (encode_bitwise, [0, 1, 3, 5, 6], None,
     trains([0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0])),
    (encode_bitwise_bidirectional, [-5, -3, -1, 0, 2, 5], None,
     trains([-1, 0, -1], [0, -1, -1], [0, 0, -1], [0, 0, 0], [0, 1, 0], [1, 0, 1])),
    (encode_bitwise_bidirectional, [-128, -77, 0, 45, 127], None,
     trains([-1, 0, 0, 0, 0, 0, 0, 0], [0, -1, 0, 0, -1, -1, 0, -1], [0] * 8,
            [0, 0, 1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1, 1, 1])),
    (encode_bitwise_twos_complement, [-5, -3, -1, 0, 2, 5], None,
     trains([1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1])),
    (encode_bitwise_twos_complement, [-128, -77, 0, 45, 127], None,
     trains([1, 1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 0, 0, 1, 1], [0] * 9,
            [0, 0, 0, 1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 1, 1, 1, 1])),
    (encode_bitwise_bidirectional, [9, -9, 3], 3,
     trains([0, 0, 1], [0, 0, -1], [0, 1, 1])),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
@pytest.mark.parametrize(("encode", "x", "T", "expected"), TABLE)
def test_spike_trains_of_spec(encode, x, T, expected, dtype):
    spikes = encode(torch.tensor(x, dtype=dtype), T)
    assert spikes.dtype == torch.float32
    assert torch.equal(spikes, expected)


def test_binary_firing_rate():
    assert firing_rate(encode_binary(torch.tensor([0.0, 1, 3, 5]))).item() == pytest.approx(0.45)


@pytest.mark.parametrize(("encoding", "x", "decoded"), [
    (Encoding.BITWISE_TWOS_COMPLEMENT, [-5, -3, -1, 0, 2, 5], [11, 13, 15, 0, 2, 5]),
    (Encoding.BITWISE_BIDIRECTIONAL, [9, -9, 3], [1, -1, 3]),  # T = 3 below: high bits dropped
])
def test_decoded_values_of_spec(encoding, x, decoded):
    T = 3 if encoding is Encoding.BITWISE_BIDIRECTIONAL else None
    spikes = spike_quant(torch.tensor(x), encoding, T).spikes
    assert torch.equal(spike_dequant(spikes, encoding), torch.tensor(decoded))


@pytest.mark.parametrize(("encoding", "x", "T", "x_zero", "decoded"), [
    (Encoding.BINARY, [-3, 0, 2, 4], 7, [3, 3, 3, 3], [0, 3, 5, 7]),
    (Encoding.TERNARY, [0, 1, 4, 7], 3, [0, -1, -2, -4], [0, 0, 2, 3]),
    (Encoding.BITWISE_BIDIRECTIONAL, [0, 1, 4, 7], 2, [0, -1, -2, -4], [0, 0, 2, 3]),
    (Encoding.BITWISE_TWOS_COMPLEMENT, [-5, -1, 0, 3], 4, [16, 16, 0, 0], [11, 15, 0, 3]),
])
def test_spike_quant_x_zero_of_spec(encoding, x, T, x_zero, decoded):
    train = spike_quant(torch.tensor(x, dtype=torch.float32), encoding)
    assert train.T == T == train.spikes.shape[0]
    assert train.encoding is encoding
    assert torch.equal(train.x_zero, torch.tensor(x_zero))
    assert torch.equal(spike_dequant(train.spikes, encoding), torch.tensor(decoded))


@pytest.mark.parametrize(("encoding", "expected"), [
    (Encoding.TERNARY, [[-28, 16], [26, 22]]),
    (Encoding.BITWISE_BIDIRECTIONAL, [[-28, 16], [26, 22]]),
    (Encoding.BITWISE_TWOS_COMPLEMENT, [[20, 80], [-54, 118]]),
])
def test_spike_matmul_of_spec(encoding, expected):
    x = torch.tensor([[3.0, -2, 5], [0, 7, -1]])
    w = torch.tensor([[1.0, -2], [3, 4], [-5, 6]])
    assert torch.equal(spike_matmul(x, w, encoding), torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize(("encoding", "x", "T"), [
    (Encoding.BINARY, [0, 0], 0),
    (Encoding.BINARY, [2, 7], 7),
    (Encoding.TERNARY, [-9, 4], 9),
    (Encoding.BITWISE, [0, 0], 1),
    (Encoding.BITWISE, [4, 1], 3),
    (Encoding.BITWISE_BIDIRECTIONAL, [-462, 3], 9),  # spec §7.6
    (Encoding.BITWISE_BIDIRECTIONAL, [-8, 7], 4),
    (Encoding.BITWISE_TWOS_COMPLEMENT, [0, 0], 2),
    (Encoding.BITWISE_TWOS_COMPLEMENT, [-128, 127], 9),
])
def test_time_steps(encoding, x, T):
    assert time_steps(torch.tensor(x), encoding) == T


def test_encoding_from_name():
    train = spike_quant(torch.tensor([-1, 2]), "bitwise_bidirectional")
    assert train.encoding is Encoding.BITWISE_BIDIRECTIONAL


@pytest.mark.parametrize("encode", [encode_binary, encode_bitwise])
def test_unipolar_encoders_reject_negative_values(encode):
    with pytest.raises(ValueError, match="x >= 0"):
        encode(torch.tensor([1, -1]))


@pytest.mark.parametrize("x", [[0.5, 1.0], [float("nan")], [float("inf")]])
def test_non_integer_values_are_rejected(x):
    with pytest.raises(ValueError, match="integer-valued"):
        spike_quant(torch.tensor(x), Encoding.TERNARY)


@pytest.mark.parametrize(("encode", "T"), [
    (encode_binary, -1), (encode_ternary, 2.0), (encode_bitwise, 0), (encode_bitwise_twos_complement, 63),
])
def test_invalid_time_steps_are_rejected(encode, T):
    with pytest.raises(ValueError, match="T for"):
        encode(torch.tensor([1, 2]), T)


UNARY_MAX_BITS = 8  # unary trains are 2^bits steps long
BITS = [4, 5, 6, 8, 12, 20, 40]


@st.composite
def integer_tensors(draw, encoding: Encoding, dims: int | None = None):
    """An integer-valued tensor of a random shape, range (signed or unsigned, `BITS` bits) and exact dtype."""
    bits = draw(st.sampled_from([b for b in BITS if encoding.bitwise or b <= UNARY_MAX_BITS]))
    low, high = draw(st.sampled_from([(0, 2**bits - 1), (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)]))
    shape = draw(st.lists(st.integers(1, 5), min_size=dims or 1, max_size=dims or 3))
    values = draw(st.lists(st.integers(low, high), min_size=torch.Size(shape).numel(),
                           max_size=torch.Size(shape).numel()))
    dtype = draw(st.sampled_from([torch.int64, torch.float64] + ([torch.float32] if bits <= 20 else [])))
    return torch.tensor(values, dtype=dtype).view(shape)


@settings(max_examples=50, deadline=None)
@given(st.data(), st.sampled_from(list(Encoding)), st.integers(0, 2))
def test_round_trip(data, encoding, extra_steps):
    x = data.draw(integer_tensors(encoding))
    T = spike_quant(x, encoding).T + extra_steps
    train = spike_quant(x, encoding, T)
    assert train.spikes.shape == (T, *x.shape)
    assert set(train.spikes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(spike_dequant(train.spikes, encoding), x.to(torch.int64) + train.x_zero)


@settings(max_examples=50, deadline=None)
@given(st.data(), st.sampled_from(list(Encoding)), st.sampled_from([torch.int64, torch.float64]))
def test_spike_matmul_equals_offset_matmul(data, encoding, dtype):
    x = data.draw(integer_tensors(encoding, dims=2)).to(dtype)
    n_out = data.draw(st.integers(1, 4))
    w = torch.tensor(data.draw(st.lists(st.integers(-8, 7), min_size=x.shape[1] * n_out,
                                        max_size=x.shape[1] * n_out)), dtype=dtype).view(x.shape[1], n_out)
    x_zero = spike_quant(x, encoding).x_zero.to(dtype)
    assert torch.equal(spike_matmul(x, w, encoding), (x + x_zero) @ w)
