"""W8ASpike GEMM plans measured per GPU model, used instead of the arithmetic default of `gemm_plan`.

`benchmarks/w8aspike_gemm.py --sweep` times every candidate plan of a projection shape at some M on one GPU and
writes the winners that beat the default into a table in the format of `tuned_plans.json`: per GPU model its
architecture and, per "NxK" shape and M, the plan's tile settings (`make_plan` arguments; the split count is
derived again from the layer's own M and ELL width). `triton_kernels.device_plan` uses the entry of the largest
swept M not above the actual M in the same range of `gemm_plan` (so an entry at M = 4096 serves every prefill
chunk of 4096 rows or more). A GPU missing from the table borrows the entry of one of the same
architecture (`gpu_tables.entry_for`); shapes or M not in the entry keep the default plan. Every plan is exact,
so a table changes speed only."""

import functools
from pathlib import Path

TABLE = Path(__file__).with_name("tuned_plans.json")

PLAN_SETTINGS = ("kind", "bm", "bn", "gb", "num_warps", "num_stages", "fp32_products", "programs_per_sm", "ell_block",
                 "prefetch", "dense_ell")
"""The `make_plan` arguments a table stores for one plan."""


def tuned_settings(N: int, K: int, device) -> dict[int, dict]:
    """The table's plan settings by M for codes [N, K] on this CUDA device (empty: keep the default plans)."""
    if device.type != "cuda":
        return {}
    return _device_plans(device.index).get(f"{N}x{K}", {})


@functools.cache
def _device_plans(index: int | None) -> dict[str, dict[int, dict]]:
    """This device's table entry: per "NxK" shape, plan settings by M (read once, keys made ints here)."""
    import logging

    import torch

    from vllm_neuronchip.ops import gpu_tables
    from vllm_neuronchip.settings import get_settings

    path = get_settings().w8aspike_plans
    table = Path(path) if path else TABLE
    gpu = torch.cuda.get_device_name(index)
    name, entry = gpu_tables.entry_for(gpu, gpu_tables.device_arch(index), table)
    plans = {shape: {int(m): settings for m, settings in by_m.items()}
             for shape, by_m in entry.get("plans", {}).items()}
    logging.getLogger("vllm.neuronchip.w8aspike").info(
        "W8ASpike GEMM plans on %s: %d tuned (shape, M) from the %s entry of %s, the default plan elsewhere",
        gpu, sum(map(len, plans.values())), name, table)
    return plans
