"""Pinned launch configs for fla's autotuned GLA prefill kernels, per GPU model.

On first use fla autotunes its chunk kernels: Triton compiles and times every candidate config (hundreds over
the prefill kernels), which dominates a cold engine start. `benchmarks/tune_fla.py` autotunes once per GPU
model at the SpikingBrain-7B shapes and records the winners in `fla_configs.json`; `pin` narrows each of
fla's autotuners to its winner, so a cold start compiles one config per kernel. Any config gives the same
result (the tune script checks this). A GPU missing from the table borrows the entry of a GPU with the same
architecture (compute capability and SM count: the H100 SXM and the H200 share sm_90 with 132 SMs, and differ
in memory only); other GPUs autotune as before.
"""

import json
import sys
from pathlib import Path

TABLE = Path(__file__).with_name("fla_configs.json")


def autotuners() -> dict[str, "triton.runtime.autotuner.Autotuner"]:  # noqa: F821
    """fla's loaded autotuners by `module.kernel`, found through the `triton.heuristics` wrappers around them."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import KernelInterface

    found = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("fla."):
            continue
        for kernel in list(vars(module).values()):
            while isinstance(kernel, KernelInterface) and not isinstance(kernel, Autotuner):
                kernel = getattr(kernel, "fn", None)
            if isinstance(kernel, Autotuner):
                found[f"{kernel.base_fn.__module__}.{kernel.base_fn.__name__}"] = kernel
    return found


def winners() -> dict[str, dict]:
    """The config each autotuner chose in this process, for the kernels that ran (the last key if several)."""
    return {
        name: {
            "kwargs": dict(config.kwargs), "num_warps": config.num_warps, "num_stages": config.num_stages,
            "num_ctas": config.num_ctas, "maxnreg": config.maxnreg,
        }
        for name, tuner in sorted(autotuners().items()) if tuner.cache
        for config in [list(tuner.cache.values())[-1]]
    }


def entry_for(gpu_name: str, arch: dict, table: Path = TABLE) -> tuple[str | None, dict]:
    """(name, entry) of the table for this GPU model, else for one of the same `arch` ({"capability": "9.0",
    "sm_count": 132}), else (None, {})."""
    entries = json.loads(table.read_text()) if table.exists() else {}
    if gpu_name in entries:
        return gpu_name, entries[gpu_name]
    return next(((name, entry) for name, entry in entries.items() if entry.get("arch") == arch), (None, {}))


def pin(gpu_name: str, arch: dict, table: Path = TABLE) -> tuple[str | None, list[str]]:
    """Narrow fla's autotuners to the configs of `entry_for` this GPU; returns the entry used and the kernels
    pinned."""
    import triton

    name, entry = entry_for(gpu_name, arch, table)
    configs, tuners = entry.get("kernels", {}), autotuners()
    pinned = sorted(set(configs) & set(tuners))
    for kernel in pinned:
        tuners[kernel].configs = [triton.Config(**configs[kernel])]
    return name, pinned


def device_arch() -> dict:
    """{"capability": "major.minor", "sm_count": SMs} of the current CUDA device: what GPUs sharing an entry must
    match."""
    import torch

    properties = torch.cuda.get_device_properties()
    return {"capability": f"{properties.major}.{properties.minor}", "sm_count": properties.multi_processor_count}
