"""W8ASpike weight codes at run time: int8 high parts plus a few packed low-bit planes, exact for any code.

A code c is stored as c = 2^E · high + low with high = c >> E (floor) in int8 and low = c & (2^E - 1) in E bit
planes of one bit a weight. E is the fewest low bits that bring every code of the layer into int8: 0 when all
codes are within [-128, 127], 1 for the real checkpoint (~1% of codes beyond ±127, all within [-256, 255]), so
it costs 1/8 byte a weight there. What the GPU GEMMs read inside their tiles: two int8 operands, high and low
(low <= 127 for E <= 7), no gathers. `accumulate` gives the exact per-group integer sums `Σ_{i∈g} s_i c_i` with
int32 accumulation (the CPU reference and the spike emulator).
"""

from dataclasses import dataclass

import torch

from vllm_neuronchip.quantization.reference import GROUP_SIZE

MAX_LOW_BITS = 7
"""Low bits at most: low = c & (2^E - 1) stays a non-negative int8 (codes within ±2^14)."""


@dataclass
class WeightCodes:
    """Exact codes c [out, in] = 2^E · `high` + Σ_i 2^i · bit i of `low_bits`, E = low_bits.shape[0].

    Bit i of column j of row n is bit j % 8 of byte low_bits[i, n, j // 8]."""

    high: torch.Tensor  # int8 [out, in]: c >> E
    low_bits: torch.Tensor  # uint8 [E, out, in / 8]: the E low bits of c, packed along in

    @classmethod
    def from_exact(cls, exact: torch.Tensor) -> "WeightCodes":
        """From exact integer codes [out, in] (any int dtype, in a multiple of 8), on their device."""
        exact = exact.to(torch.int32)
        out, in_features = exact.shape
        if in_features % 8:
            raise ValueError(f"weight codes need an input width divisible by 8, got {in_features}")
        lowest, highest = (int(exact.min()), int(exact.max())) if exact.numel() else (0, 0)
        low_bits = 0
        while lowest >> low_bits < -128 or highest >> low_bits > 127:
            low_bits += 1
        if low_bits > MAX_LOW_BITS:
            raise ValueError(f"weight codes within [{lowest}, {highest}] need {low_bits} low bits beyond int8 "
                             f"(at most {MAX_LOW_BITS}): expected codes mostly within ±127 (wrong scales?)")
        shifts = torch.arange(8, device=exact.device, dtype=torch.int32)
        planes = [((exact >> i) & 1).view(out, in_features // 8, 8) << shifts for i in range(low_bits)]
        packed = torch.stack([p.sum(-1) for p in planes]) if planes else exact.new_zeros(0, out, in_features // 8)
        return cls((exact >> low_bits).to(torch.int8), packed.to(torch.uint8))

    @property
    def shape(self) -> torch.Size:
        return self.high.shape

    @property
    def low_bit_count(self) -> int:
        return self.low_bits.shape[0]

    @property
    def nbytes(self) -> int:
        return self.high.nbytes + self.low_bits.nbytes

    def low(self) -> torch.Tensor:
        """c & (2^E - 1) as int32 [out, in] (zeros when E = 0)."""
        out, in_features = self.high.shape
        shifts = torch.arange(8, device=self.high.device, dtype=torch.int32)
        low = torch.zeros(out, in_features, dtype=torch.int32, device=self.high.device)
        for i in range(self.low_bit_count):
            bits = (self.low_bits[i].to(torch.int32)[..., None] >> shifts) & 1  # [out, in / 8, 8]
            low += bits.view(out, in_features) << i
        return low

    def exact(self) -> torch.Tensor:
        """The exact codes as int32 [out, in]."""
        return (self.high.to(torch.int32) << self.low_bit_count) + self.low()

    def accumulate(self, spike_counts: torch.Tensor) -> torch.Tensor:
        """acc[r, o, g] = Σ_{i in group g} s[r, i] · c[o, i], int32, exact while each group sum fits int32
        (|s| · |c| · 128 < 2^31: |s| up to ~6e4 with codes near ±255)."""
        rows, in_features = spike_counts.shape
        out, groups = self.high.shape[0], in_features // GROUP_SIZE
        s = spike_counts.to(torch.int32).view(rows, groups, GROUP_SIZE).transpose(0, 1)
        c = self.exact().view(out, groups, GROUP_SIZE).permute(1, 2, 0)
        return (s @ c).permute(1, 2, 0).contiguous()  # [rows, out, groups]
