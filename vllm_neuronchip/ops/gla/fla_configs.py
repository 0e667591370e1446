"""Pinned launch configs for fla's autotuned GLA prefill kernels, per GPU model.

On first use fla autotunes its chunk kernels: Triton compiles and times every candidate config (hundreds over
the prefill kernels), which dominates a cold engine start. `benchmarks/tune_fla.py` autotunes once per GPU
model at the SpikingBrain-7B shapes and records the winners in `fla_configs.json`; `pin` narrows each of
fla's autotuners to its winner, so a cold start compiles one config per kernel. Any config gives the same
result (the tune script checks this); GPUs missing from the table autotune as before.
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


def pin(gpu_name: str, table: Path = TABLE) -> list[str]:
    """Narrow fla's autotuners to the table's configs for this GPU model; returns the kernels pinned."""
    import triton

    configs = json.loads(table.read_text()).get(gpu_name, {}).get("kernels", {}) if table.exists() else {}
    tuners = autotuners()
    pinned = sorted(set(configs) & set(tuners))
    for name in pinned:
        tuners[name].configs = [triton.Config(**configs[name])]
    return pinned
