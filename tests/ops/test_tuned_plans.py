"""The per-GPU table of W8ASpike GEMM plans: what the sweep writes is what the plugin reads back, and a plan
rebuilt from the table's settings is the swept plan."""

import dataclasses
import json
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vllm_neuronchip.ops import gpu_tables
from vllm_neuronchip.ops.w8aspike import triton_kernels, tuned_plans
from vllm_neuronchip.settings import get_settings

SWEEP_SCRIPT = Path(__file__).parents[2] / "benchmarks" / "w8aspike_gemm.py"
SM90 = {"capability": "9.0", "sm_count": 132}
CUDA = SimpleNamespace(type="cuda", index=0)


def sweep_module():
    spec = importlib.util.spec_from_file_location("w8aspike_gemm", SWEEP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A CUDA device named "GPU A" (sm_90, 132 SMs) whose plan table is tmp_path/plans.json via the setting."""
    table = tmp_path / "plans.json"
    monkeypatch.setenv("NEURONCHIP_W8ASPIKE_PLANS", str(table))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU A")
    monkeypatch.setattr(gpu_tables, "device_arch", lambda device=None: SM90)
    get_settings.cache_clear()
    tuned_plans._device_plans.cache_clear()
    yield table
    get_settings.cache_clear()
    tuned_plans._device_plans.cache_clear()


@pytest.mark.parametrize("M,N,G,W", [(1, 4608, 28, 57), (1, 3584, 148, 250), (16, 37888, 28, 60), (64, 512, 28, 0)])
def test_a_plan_rebuilt_from_its_table_settings_is_the_same_plan(M, N, G, W):
    for plan in triton_kernels.candidate_plans(M, N, G, W):
        settings = {k: dataclasses.asdict(plan)[k] for k in tuned_plans.PLAN_SETTINGS}
        assert triton_kernels.make_plan(M=M, N=N, G=G, W=W, sm_count=132, **settings) == plan


def test_the_sweeps_winners_are_what_the_plugin_reads_back(fake_gpu):
    default = triton_kernels.gemm_plan(1, 3584, 148, 250)
    faster = triton_kernels.make_plan("gemv", 1, 3584, 148, 250, 132, bn=64, gb=2, num_warps=8, programs_per_sm=4.0)
    row = {"N": 3584, "K": 18944, "M": 1, "default_s": 40e-6}
    rows = [row | {"best": {"plan": dataclasses.asdict(faster), "s": 30e-6}, "tuned": True},
            row | {"M": 16, "best": {"plan": dataclasses.asdict(default), "s": 39.5e-6}, "tuned": False}]
    sweep_module().write_tuned_table(rows, fake_gpu, "cuda:0")
    assert tuned_plans.tuned_settings(3584, 18944, CUDA) == {  # M = 16 was within the margin: not in the table
        1: {k: dataclasses.asdict(faster)[k] for k in tuned_plans.PLAN_SETTINGS}}
    assert tuned_plans.tuned_settings(4608, 3584, CUDA) == {}  # a shape the sweep did not time
    assert tuned_plans.tuned_settings(3584, 18944, torch.device("cpu")) == {}


def test_a_swept_plan_serves_larger_m_in_its_range_only(fake_gpu, monkeypatch):
    monkeypatch.setattr(triton_kernels, "_sm_count", lambda device: 132)
    N, G, W = 4608, 28, 57
    swept = {M: triton_kernels.make_plan("dot", M, N, G, W, 132, bm=64, bn=64, num_warps=4, num_stages=4)
             for M in (16, 4096)}
    rows = [{"N": N, "K": G * 128, "M": M, "default_s": 2.0, "best": {"plan": dataclasses.asdict(plan), "s": 1.0},
             "tuned": True} for M, plan in swept.items()]
    sweep_module().write_tuned_table(rows, fake_gpu, "cuda:0")
    tuned = {M: triton_kernels.device_plan(M, N, G, W, CUDA) for M in (1, 8, 16, 17, 4000, 4096, 16384)}
    for M in (1, 8, 17, 4000):  # below every swept M of its range, or in a range the sweep did not time
        assert tuned[M] == triton_kernels.gemm_plan(M, N, G, W, 132)
    for M in (16, 4096, 16384):  # a swept M, or above one in the same range: its tiles, splits for this M
        expected = triton_kernels.make_plan("dot", M, N, G, W, 132, bm=64, bn=64, num_warps=4, num_stages=4)
        assert tuned[M] == expected != triton_kernels.gemm_plan(M, N, G, W, 132)


def test_a_gpu_of_another_architecture_keeps_the_default_plans(fake_gpu, monkeypatch):
    fake_gpu.write_text('{"GPU B": {"arch": {"capability": "9.0", "sm_count": 132}, '
                        '"plans": {"3584x18944": {"1": {"kind": "gemv", "bn": 64}}}}}')
    assert tuned_plans.tuned_settings(3584, 18944, CUDA) == {1: {"kind": "gemv", "bn": 64}}  # borrowed: same arch
    tuned_plans._device_plans.cache_clear()
    monkeypatch.setattr(gpu_tables, "device_arch", lambda device=None: {"capability": "8.0", "sm_count": 108})
    assert tuned_plans.tuned_settings(3584, 18944, CUDA) == {}


def test_the_committed_table_names_only_known_settings():
    """Every setting a make_plan argument; settings added since the sweep ran take their defaults."""
    table = tuned_plans.TABLE.read_text()
    for entry in json.loads(table).values():
        assert entry["arch"]["capability"]
        for by_m in entry["plans"].values():
            for settings in by_m.values():
                assert "kind" in settings and set(settings) <= set(tuned_plans.PLAN_SETTINGS)
