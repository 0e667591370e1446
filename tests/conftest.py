"""Shared fixtures: tiny checkpoints in the released layout and in-process vLLM settings."""

import os

import pytest

# In-process engine, deterministic and fast to start; float32 for exact comparisons.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def neuronchip_env(monkeypatch):
    """Sets NEURONCHIP_ settings for this test: `neuronchip_env(DECODE_GEMV="1")` sets NEURONCHIP_DECODE_GEMV and
    drops the cached settings (also at the end, so later tests read their own environment)."""
    from vllm_neuronchip.settings import get_settings

    def set_env(**settings: str) -> None:
        for name, value in settings.items():
            monkeypatch.setenv(f"NEURONCHIP_{name}", value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(directory, tensors, config) of the default tiny model, safetensors in two shards."""
    from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint

    directory = tmp_path_factory.mktemp("tiny-gla-swa")
    spec = TinySpec()
    tensors = save_checkpoint(directory, spec, shards=2)
    return directory, tensors, spec.config()
