"""Tables of launch settings measured per GPU model (fla's GLA configs, W8ASpike GEMM plans): the entry of this
GPU, or of another GPU of the same architecture. The H100 SXM and the H200 share sm_90 with 132 SMs and differ
in memory only, so one borrows the other's entry; GPUs of other architectures find none."""

import json
from pathlib import Path


def entry_for(gpu_name: str, arch: dict, table: Path) -> tuple[str | None, dict]:
    """(name, entry) of the table for this GPU model, else for one of the same `arch` ({"capability": "9.0",
    "sm_count": 132}), else (None, {})."""
    entries = json.loads(table.read_text()) if table.exists() else {}
    if gpu_name in entries:
        return gpu_name, entries[gpu_name]
    return next(((name, entry) for name, entry in entries.items() if entry.get("arch") == arch), (None, {}))


def device_arch(device=None) -> dict:
    """{"capability": "major.minor", "sm_count": SMs} of a CUDA device (the current one by default): what GPUs
    sharing an entry must match."""
    import torch

    properties = torch.cuda.get_device_properties(device)
    return {"capability": f"{properties.major}.{properties.minor}", "sm_count": properties.multi_processor_count}
