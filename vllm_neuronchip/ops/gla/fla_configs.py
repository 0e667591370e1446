"""Pinned launch configs for fla's autotuned GLA prefill kernels, per GPU model.

On first use fla autotunes its chunk kernels: Triton compiles and times every candidate config (hundreds over
the prefill kernels), which dominates a cold engine start. `benchmarks/tune_fla.py` autotunes once per GPU
model at the SpikingBrain-7B shapes and records the winners in `fla_configs.json`; `pin` narrows each of
fla's autotuners to its winner, so a cold start compiles one config per kernel. Any config gives the same
result (the tune script checks this). A GPU missing from the table borrows the entry of a GPU with the same
architecture (`gpu_tables.entry_for`); other GPUs autotune as before.
"""

import sys
from pathlib import Path

from vllm_neuronchip.ops.gpu_tables import entry_for

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
