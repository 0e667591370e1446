"""Pinned fla configs (ops/gla/fla_configs.py): autotuners are found behind `triton.heuristics`, the winners of a
run are recorded, and pinning narrows an autotuner to one config; the packaged table is well formed."""

import json
import sys
import types

import pytest

from vllm_neuronchip.ops import gpu_tables
from vllm_neuronchip.ops.gla import fla_configs

triton = pytest.importorskip("triton", reason="triton is not installed")


@pytest.fixture
def fake_fla_module(monkeypatch):
    """A module named like fla's with one heuristics-wrapped autotuned kernel (never launched)."""
    import triton.language as tl

    def scale_kernel(x, BLOCK: tl.constexpr, EVEN: tl.constexpr):
        tl.store(x + tl.arange(0, BLOCK), tl.load(x + tl.arange(0, BLOCK)) * 2)

    scale_kernel.__module__ = "fla.ops.fake"
    configs = [triton.Config({"BLOCK": b}, num_warps=w) for b in (16, 32) for w in (1, 4)]
    kernel = triton.heuristics({"EVEN": lambda args: True})(
        triton.autotune(configs=configs, key=["BLOCK"])(triton.jit(scale_kernel))
    )
    module = types.ModuleType("fla.ops.fake")
    module.scale_kernel = kernel
    monkeypatch.setitem(sys.modules, "fla.ops.fake", module)
    return kernel.fn


def test_finds_autotuners_behind_heuristics(fake_fla_module):
    assert fla_configs.autotuners()["fla.ops.fake.scale_kernel"] is fake_fla_module


def test_winners_record_the_chosen_config(fake_fla_module):
    assert "fla.ops.fake.scale_kernel" not in fla_configs.winners()  # not run yet
    fake_fla_module.cache[(32,)] = fake_fla_module.configs[3]
    assert fla_configs.winners()["fla.ops.fake.scale_kernel"] == {
        "kwargs": {"BLOCK": 32}, "num_warps": 4, "num_stages": fake_fla_module.configs[3].num_stages,
        "num_ctas": 1, "maxnreg": None,
    }


SM90 = {"capability": "9.0", "sm_count": 132}


def test_pin_narrows_to_the_table_config_of_this_gpu(fake_fla_module, tmp_path):
    config = {"kwargs": {"BLOCK": 16}, "num_warps": 1, "num_stages": 2, "num_ctas": 1, "maxnreg": None}
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"GPU A": {"arch": SM90, "kernels": {"fla.ops.fake.scale_kernel": config,
                                                                     "fla.gone": config}}}))

    assert fla_configs.pin("GPU B", {"capability": "8.0", "sm_count": 108}, table) == (None, [])
    assert len(fake_fla_module.configs) == 4
    assert fla_configs.pin("GPU A", {"capability": "8.0", "sm_count": 108}, table) == (
        "GPU A", ["fla.ops.fake.scale_kernel"])
    (pinned,) = fake_fla_module.configs
    assert (pinned.kwargs, pinned.num_warps, pinned.num_stages) == ({"BLOCK": 16}, 1, 2)


def test_a_gpu_missing_from_the_table_borrows_an_entry_of_the_same_architecture(tmp_path):
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"GPU A": {"arch": SM90, "kernels": {}},
                                 "GPU C": {"arch": {"capability": "9.0", "sm_count": 114}, "kernels": {}}}))
    assert gpu_tables.entry_for("GPU B", SM90, table)[0] == "GPU A"
    assert gpu_tables.entry_for("GPU B", {"capability": "9.0", "sm_count": 114}, table)[0] == "GPU C"
    assert gpu_tables.entry_for("GPU B", {"capability": "9.0", "sm_count": 78}, table) == (None, {})


def test_packaged_table_is_well_formed():
    table = json.loads(fla_configs.TABLE.read_text())
    for gpu, entry in table.items():
        assert entry["kernels"], gpu
        assert set(entry["arch"]) == {"capability", "sm_count"}, gpu
        for name, config in entry["kernels"].items():
            assert name.startswith("fla."), name
            triton.Config(**config)
