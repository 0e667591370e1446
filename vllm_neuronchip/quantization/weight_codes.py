"""W8ASpike weight codes at run time: int8 where they fit, the ~1% beyond ±127 kept exactly aside.

`accumulate` gives the exact per-group integer sums `Σ_{i∈g} s_i c_i` with int32 accumulation:
the int8 part as a grouped GEMM, the overflow as a sparse correction added to the same sums.
"""

from dataclasses import dataclass

import torch

from vllm_neuronchip.quantization.reference import GROUP_SIZE

INT8_LIMIT = 127


@dataclass
class WeightCodes:
    codes: torch.Tensor  # int8 [out, in], clamped to ±127
    overflow_rows: torch.Tensor  # int64 [n]
    overflow_cols: torch.Tensor  # int64 [n]
    overflow_residual: torch.Tensor  # int32 [n]: exact code minus its clamped int8 value

    @classmethod
    def from_exact(cls, exact: torch.Tensor) -> "WeightCodes":
        """From exact integer codes [out, in] (any int dtype)."""
        exact = exact.to(torch.int32)
        clamped = exact.clamp(-INT8_LIMIT, INT8_LIMIT)
        rows, cols = (exact != clamped).nonzero(as_tuple=True)
        return cls(clamped.to(torch.int8), rows, cols, (exact - clamped)[rows, cols])

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def exact(self) -> torch.Tensor:
        """The exact codes as int32 [out, in]."""
        codes = self.codes.to(torch.int32)
        codes[self.overflow_rows, self.overflow_cols] += self.overflow_residual
        return codes

    def accumulate(self, spike_counts: torch.Tensor) -> torch.Tensor:
        """acc[r, o, g] = Σ_{i in group g} s[r, i] · c[o, i], int32, exact while each group sum fits int32
        (|s| · |c| · 128 < 2^31: |s| up to ~1e5 with codes near ±190)."""
        rows, in_features = spike_counts.shape
        out, groups = self.codes.shape[0], in_features // GROUP_SIZE
        s = spike_counts.to(torch.int32).view(rows, groups, GROUP_SIZE).transpose(0, 1)
        c = self.codes.to(torch.int32).view(out, groups, GROUP_SIZE).permute(1, 2, 0)
        acc = (s @ c).permute(1, 2, 0).contiguous()  # [rows, out, groups]
        if self.overflow_rows.numel():
            correction = spike_counts[:, self.overflow_cols].to(torch.int32) * self.overflow_residual
            slots = self.overflow_rows * groups + self.overflow_cols // GROUP_SIZE
            acc.view(rows, out * groups).index_add_(1, slots, correction)
        return acc
