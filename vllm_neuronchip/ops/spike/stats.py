"""Spike statistics of one GEMM input (Decision D9), computed from the integer activations directly.

Pure tensor ops: no spike train is built and nothing waits on the device until ``to_dict()``.

For integer activations s with N values, encoded bitwise sign-magnitude (W8ASpike's encoder):

- spike events ``E = Σ popcount(|s|)``; spikes per channel ``E / N``; silent fraction = share of s == 0;
- sparsity over T steps ``1 − E / (N·T)``, T the encoder's default T for that tensor,
  ``max(1, ceil(log2(max|s| + 1)))``; accumulated over calls it is ``1 − ΣE / Σ(N·T)``;
- 3-step window sparsity ``1 − E3 / (3·N)`` with ``E3 = Σ popcount(min(|s|, 7))``: a value that needs more
  than 3 bits fires at all 3 steps. This is our definition. The paper's exact formula for its "69.15%
  under a step size of 3" is unknown (spec §9.3, open question 4). The paper gives no code, it is not
  ``1 − (E/N)/3``, and Int2Spike with explicit T = 3 would keep only the low 3 bits (9 → 1 spike) instead;
- histogram of |s| over 0..16 plus one bin for |s| > 16, and from it the fraction with |s| <= 7;
- synaptic operations of the GEMM = ``E × fan_out`` (output features reached by each input spike).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

HISTOGRAM_MAX = 16
"""The histogram counts |s| = 0..HISTOGRAM_MAX one by one, then all |s| > HISTOGRAM_MAX in one bin."""
WINDOW_T = 3
"""Step count of the paper's fixed-window sparsity."""


def popcount(v: Tensor) -> Tensor:
    """Set bits of each element of an int64 tensor with values >= 0 (SWAR bit counting)."""
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    v = v + (v >> 32)
    return v & 0x7F


@dataclass(frozen=True)
class SpikeStats:
    """Additive spike counts (int64 tensors on the activations' device); ``a + b`` accumulates calls/layers."""

    histogram: Tensor  # [HISTOGRAM_MAX + 2]: counts of |s| = 0..HISTOGRAM_MAX, then of |s| > HISTOGRAM_MAX
    spike_events: Tensor  # E = Σ popcount(|s|)
    slots: Tensor  # Σ N·T over the calls: neuron-steps at each tensor's own T
    synaptic_ops: Tensor  # Σ E·fan_out over the calls

    @classmethod
    def zeros(cls, device: torch.device | str | None = None) -> SpikeStats:
        """The empty accumulator."""
        zero = torch.zeros((), dtype=torch.int64, device=device)
        return cls(torch.zeros(HISTOGRAM_MAX + 2, dtype=torch.int64, device=device), zero, zero, zero)

    def __add__(self, other: SpikeStats) -> SpikeStats:
        return SpikeStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> dict[str, float | int | list[int]]:
        """Counts and ratios for metrics (one host sync). Ratios are NaN while no value was counted."""
        counts = torch.cat([self.histogram, torch.stack([self.spike_events, self.slots, self.synaptic_ops])])
        *histogram, events, slots, synaptic_ops = counts.tolist()
        n = sum(histogram)
        window_events = sum(c * bin(min(v, 7)).count("1") for v, c in enumerate(histogram))

        def ratio(a: int, b: int) -> float:
            return a / b if b else float("nan")

        return {
            "values": n,
            "spike_events": events,
            "spikes_per_channel": ratio(events, n),
            "silent_fraction": ratio(histogram[0], n),
            "mean_time_steps": ratio(slots, n),
            "sparsity": 1.0 - ratio(events, slots),
            "sparsity_t3": 1.0 - ratio(window_events, WINDOW_T * n),
            "fraction_le_7": ratio(sum(histogram[:8]), n),
            "fraction_gt_16": ratio(histogram[-1], n),
            "synaptic_ops": synaptic_ops,
            "histogram": histogram,
        }


def spike_stats(s: Tensor, fan_out: int) -> SpikeStats:
    """Statistics of integer activations s (float or int dtype, whole numbers) feeding a GEMM with fan_out outputs.

    T is taken over the whole tensor, as the W8ASpike encoder does per call. The encoder's int32 counts on a GPU
    go to `triton_stats` (one pass); this is its reference.
    """
    if s.is_cuda and s.dtype == torch.int32:
        from vllm_neuronchip.ops.spike import triton_stats

        return triton_stats.spike_stats(s, fan_out)
    if s.numel() == 0:
        return SpikeStats.zeros(s.device)
    v = s.abs().to(torch.int64).flatten()
    events = popcount(v).sum()
    # T = bit length of max|s|: the exponent e of max|s| = m·2^e, 0.5 <= m < 1 (exact below 2^53)
    T = torch.frexp(v.max().to(torch.float64)).exponent.clamp(min=1)
    # Histogram by sorting: no atomics, deterministic, no host sync, capturable in a CUDA graph.
    bins = v.clamp(max=HISTOGRAM_MAX + 1).to(torch.uint8).sort().values
    edges = torch.arange(HISTOGRAM_MAX + 3, dtype=torch.uint8, device=v.device)
    histogram = torch.searchsorted(bins, edges).diff()
    return SpikeStats(histogram=histogram, spike_events=events, slots=T * v.numel(), synaptic_ops=events * fan_out)
