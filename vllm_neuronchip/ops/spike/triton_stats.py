"""Spike statistics of int32 activations on a GPU in one pass: the same `SpikeStats` as `stats.spike_stats` (the
reference), without its int64 copies and its sort.

The W8ASpike linears record the statistics of every input they see outside CUDA graphs, i.e. of every prefill
(M x K values per linear, 16384 x 3584 at a full 7B prefill step). The reference's ops make about ten passes over
int64 copies and sort the values for the histogram; here one Triton program per BLOCK values reads them once and
adds its popcount sum, maximum and local histogram to the totals with integer atomics (exact, and in any order the
same sums). No host sync: T is derived from the maximum on the device.
"""

import functools

import torch

from vllm_neuronchip.ops.spike.stats import HISTOGRAM_MAX, SpikeStats

BLOCK = 4096
"""Values per program."""
BINS = 32
"""Histogram bins of a program (a power of two): |s| = 0..HISTOGRAM_MAX, one for larger |s|, the last for lanes
past the end."""


def spike_stats(s: torch.Tensor, fan_out: int) -> SpikeStats:
    """`stats.spike_stats` of an int32 tensor (on a CUDA device, or any under TRITON_INTERPRET=1)."""
    import triton

    assert s.dtype == torch.int32, s.dtype
    values = s.contiguous().view(-1)
    n = values.numel()
    histogram = torch.zeros(BINS, dtype=torch.int64, device=s.device)
    totals = torch.zeros(2, dtype=torch.int64, device=s.device)  # spike events, max |s|
    if n:
        _kernel()[(triton.cdiv(n, BLOCK),)](values, n, histogram, totals, BLOCK=BLOCK, BINS=BINS,
                                            OVER=HISTOGRAM_MAX + 1)
    events, maximum = totals
    steps = torch.frexp(maximum.double()).exponent.clamp(min=1)  # bit length of max |s|, as the reference
    return SpikeStats(histogram=histogram[: HISTOGRAM_MAX + 2], spike_events=events, slots=steps * n,
                      synaptic_ops=events * fan_out)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def spike_stats_kernel(s, n, histogram, totals, BLOCK: tl.constexpr, BINS: tl.constexpr, OVER: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        v = tl.abs(tl.load(s + offsets, mask=inside, other=0))
        bits = v - ((v >> 1) & 0x55555555)  # popcount of 31-bit values (SWAR), in int32 without overflow
        bits = (bits & 0x33333333) + ((bits >> 2) & 0x33333333)
        bits = (bits + (bits >> 4)) & 0x0F0F0F0F
        bits = bits + (bits >> 8)
        bits = (bits + (bits >> 16)) & 0x3F
        tl.atomic_add(totals, tl.sum(bits.to(tl.int64), axis=0))
        tl.atomic_max(totals + 1, tl.max(v, axis=0).to(tl.int64))
        bins = tl.where(inside, tl.minimum(v, OVER), BINS - 1)
        counts = tl.histogram(bins, BINS)
        tl.atomic_add(histogram + tl.arange(0, BINS), counts.to(tl.int64))

    return spike_stats_kernel
