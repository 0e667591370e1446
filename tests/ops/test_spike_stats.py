"""Spike statistics (D9): hand-computed examples, additivity, and agreement with the W8ASpike encoder."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_neuronchip.ops.spike import (
    Encoding,
    SpikeStats,
    encode_bitwise_bidirectional,
    spike_stats,
    time_steps,
)
from vllm_neuronchip.ops.spike.stats import popcount

# |s| = 0, 1, 3, 7, 8, 17, 100, 0 -> popcounts 0, 1, 2, 3, 1, 2, 3, 0: E = 12; max 100 needs T = 7 bits.
EXAMPLE = [[0.0, 1, -3, 7], [8, -17, 100, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_hand_computed_example(dtype):
    stats = spike_stats(torch.tensor(EXAMPLE, dtype=dtype), fan_out=10).to_dict()
    assert stats == {
        "values": 8,
        "spike_events": 12,
        "spikes_per_channel": 12 / 8,
        "silent_fraction": 2 / 8,
        "mean_time_steps": 7.0,
        "sparsity": 1 - 12 / (8 * 7),
        # min(|s|, 7) = 0, 1, 3, 7, 7, 7, 7, 0 -> 0 + 1 + 2 + 3 * 4 + 0 = 15 events in the 3-step window
        "sparsity_t3": 1 - 15 / (8 * 3),
        "fraction_le_7": 5 / 8,
        "fraction_gt_16": 2 / 8,
        "synaptic_ops": 12 * 10,
        "histogram": [2, 1, 0, 1, 0, 0, 0, 1, 1] + [0] * 8 + [2],
    }


def test_all_silent_input():
    stats = spike_stats(torch.zeros(3, 4), fan_out=5).to_dict()
    assert stats["spike_events"] == 0 and stats["synaptic_ops"] == 0
    assert stats["mean_time_steps"] == 1.0  # the encoder's T is at least 1
    assert stats["silent_fraction"] == stats["sparsity"] == stats["sparsity_t3"] == 1.0


def test_histogram_edges():
    histogram = spike_stats(torch.tensor([16, -16, 17, -1000]), fan_out=1).to_dict()["histogram"]
    assert histogram[16] == 2 and histogram[17] == 2 and sum(histogram) == 4


def test_empty_input_and_zero_accumulator():
    for stats in (spike_stats(torch.zeros(0, 8), fan_out=4).to_dict(), SpikeStats.zeros().to_dict()):
        assert stats["values"] == stats["spike_events"] == stats["synaptic_ops"] == 0
        assert stats["histogram"] == [0] * 18
        assert math.isnan(stats["sparsity"]) and math.isnan(stats["spikes_per_channel"])


def test_accumulation_adds_counts_and_weights_ratios():
    a = torch.tensor(EXAMPLE)  # N = 8, E = 12, T = 7
    b = torch.tensor([[3.0, 0], [-2, 1]])  # N = 4, E = 2 + 0 + 1 + 1 = 4, T = 2
    total = SpikeStats.zeros() + spike_stats(a, fan_out=10) + spike_stats(b, fan_out=3)
    stats = total.to_dict()
    assert stats["values"] == 12
    assert stats["spike_events"] == 16
    assert stats["mean_time_steps"] == (8 * 7 + 4 * 2) / 12
    assert stats["sparsity"] == 1 - 16 / (8 * 7 + 4 * 2)
    assert stats["sparsity_t3"] == 1 - (15 + 4) / (12 * 3)
    assert stats["silent_fraction"] == 3 / 12
    assert stats["synaptic_ops"] == 12 * 10 + 4 * 3
    hist_a, hist_b = (spike_stats(t, fan_out=1).to_dict()["histogram"] for t in (a, b))
    assert stats["histogram"] == [p + q for p, q in zip(hist_a, hist_b)]


def test_popcount():
    values = [0, 1, 2, 3, 7, 8, 255, 256, 12345, 2**31 - 1, 2**31, 2**40 + 5, 2**62 - 1, 2**63 - 1]
    assert popcount(torch.tensor(values)).tolist() == [bin(n).count("1") for n in values]


@pytest.mark.parametrize("max_abs", [0, 1, 2, 3, 4, 255, 256, 2**31 - 1, 2**31, 2**52 + 1])
def test_time_steps_match_the_encoder(max_abs):
    s = torch.tensor([0, -max_abs, max_abs // 2], dtype=torch.int64)
    T = spike_stats(s, fan_out=1).to_dict()["mean_time_steps"]
    assert T == time_steps(s, Encoding.BITWISE_BIDIRECTIONAL) == max(1, max_abs.bit_length())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=64), st.integers(1, 4096))
def test_agrees_with_the_encoder(values, fan_out):
    s = torch.tensor(values, dtype=torch.float32)
    stats = spike_stats(s, fan_out).to_dict()
    T = time_steps(s, Encoding.BITWISE_BIDIRECTIONAL)
    events = int(encode_bitwise_bidirectional(s).abs().sum())
    window_events = int(encode_bitwise_bidirectional(s.abs().clamp(max=7), T=3).abs().sum())
    assert stats["spike_events"] == events
    assert stats["mean_time_steps"] == T
    assert stats["sparsity"] == 1 - events / (len(values) * T)
    assert stats["sparsity_t3"] == 1 - window_events / (len(values) * 3)
    assert stats["synaptic_ops"] == events * fan_out
    assert stats["silent_fraction"] == values.count(0) / len(values)
    assert stats["fraction_le_7"] == sum(abs(n) <= 7 for n in values) / len(values)


# Triton reads TRITON_INTERPRET when it is first imported, hence a fresh process.
TRITON_STATS_CHECK = """
import torch
from vllm_neuronchip.ops.spike import stats, triton_stats
torch.manual_seed(0)
cases = [
    torch.tensor([[0, 1, -3, 7], [8, -17, 100, 0]], dtype=torch.int32),  # the hand-computed example
    torch.zeros(5, 3, dtype=torch.int32),
    torch.zeros(0, 8, dtype=torch.int32),
    torch.randint(-20, 21, (3, 4096), dtype=torch.int32),  # several programs, values around the histogram's end
    torch.randint(-(2**30), 2**30, (4097,), dtype=torch.int32),  # wide values, a partial last block
    (torch.randn(2, 5000) * 4).round().int(),
]
for s in cases:
    expected = stats.spike_stats(s.long(), fan_out=7).to_dict()  # int64: the reference's torch path
    got = triton_stats.spike_stats(s, fan_out=7).to_dict()
    assert str(got) == str(expected), (s.shape, got, expected)  # str: NaN ratios of empty inputs compare equal
print("triton stats ok")
"""


def test_triton_stats_match_the_reference_in_interpreter():
    """The one-pass Triton statistics (used for int32 counts on a GPU) equal the torch reference."""
    from tests.ops.test_gla import run_in_interpreter

    run_in_interpreter(TRITON_STATS_CHECK, "triton stats ok")


@pytest.mark.gpu
def test_triton_stats_on_cuda_match_the_reference():
    torch.manual_seed(1)
    s = (torch.randn(1000, 3584) * 6).round().int()
    expected = spike_stats(s, fan_out=3).to_dict()
    assert spike_stats(s.cuda(), fan_out=3).to_dict() == expected
