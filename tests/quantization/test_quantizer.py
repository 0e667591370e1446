"""The W8ASpike quantizer and layouts: float checkpoint -> released / compact, round trips, the merged gate,
the overflow COO, clear errors for bad sources, k calibration, and the command without a tty."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from vllm_neuronchip.quantization.checkpoint import (
    expected_w8aspike_tensors,
    full_rank,
    linear_codes,
    quant_linear_names,
    save_w8aspike_checkpoint,
    w8aspike_linear_tensors,
)
from vllm_neuronchip.quantization.quantizer import (
    QuantizerError,
    main,
    quantize_checkpoint,
    read_tensors,
)
from vllm_neuronchip.quantization.reference import GROUP_SIZE, is_spiked, weight_codes
from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint


@pytest.fixture(scope="module")
def quantized(tiny_checkpoint, tmp_path_factory):
    """The session's tiny float checkpoint (two safetensors shards) quantized to both layouts."""
    src, float_tensors, config = tiny_checkpoint
    out = {}
    for layout in ("released", "compact"):
        dst = tmp_path_factory.mktemp(layout)
        quantize_checkpoint(src, dst, layout)
        out[layout] = (dst, read_tensors(dst))
    return src, float_tensors, config, out


def assert_layout(tensors, config, layout):
    expected = expected_w8aspike_tensors(config, layout)
    assert sorted(tensors) == sorted(expected)
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        assert all(e is None or e == g for e, g in zip(shape, t.shape)) and t.dim() == len(shape), name
        assert t.dtype == (dtype or torch.float32), name


@pytest.mark.parametrize("layout", ["released", "compact"])
def test_names_shapes_dtypes_and_config(quantized, layout):
    src, _, config, out = quantized
    dst, tensors = out[layout]
    assert_layout(tensors, config, layout)
    config_json = json.loads((dst / "config.json").read_text())
    if layout == "released":
        assert "quantization_config" not in config_json and "gate_low_rank_dim" not in config_json
    else:
        assert config_json["quantization_config"] == {
            "quant_method": "w8aspike", "format": "compact", "group_size": 128, "k": 3.0,
        }
        assert config_json["gate_low_rank_dim"] is None
    for file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (dst / file).read_bytes() == (src / file).read_bytes()


def test_released_codes_times_scales_reproduce_the_weights(quantized):
    _, float_tensors, config, out = quantized
    tensors = out["released"][1]
    for prefix in quant_linear_names(full_rank(config)):
        weight, scales = tensors[prefix + ".weight"], tensors[prefix + ".weight_quantizer.scales"]
        codes = weight_codes(weight, scales)
        assert codes.abs().max() == 127  # σ = amax / 127: every group's largest weight gets ±127
        dequantized = (codes.view(*scales.shape[:2], GROUP_SIZE) * scales).view_as(weight)
        assert ((dequantized - weight).abs() <= scales.repeat_interleave(GROUP_SIZE, 1).squeeze(-1) / 2 * 1.0001).all()
        if "gk_proj" not in prefix:
            assert torch.equal(weight, float_tensors[prefix + ".weight"])
    for name, tensor in float_tensors.items():  # everything else is copied (as float32)
        if "gk_proj" not in name and not name.endswith("proj.weight"):
            assert torch.equal(tensors[name], tensor), name


def test_merged_gate_is_w1_times_w0(quantized):
    _, float_tensors, config, out = quantized
    for layout in ("released", "compact"):
        tensors = out[layout][1]
        for i in range(0, config.num_hidden_layers, 2):
            p = f"model.layers.{i}.attn.gk_proj"
            merged = float_tensors[p + ".1.weight"] @ float_tensors[p + ".0.weight"]
            codes, scales = linear_codes(tensors, p)
            dequantized = (codes.view(*scales.shape, GROUP_SIZE) * scales[..., None]).view_as(merged)
            assert torch.equal(tensors[p + ".bias"], float_tensors[p + ".1.bias"])
            if layout == "released":
                torch.testing.assert_close(tensors[p + ".weight"], merged, rtol=1e-6, atol=1e-7)
            assert ((dequantized - merged).abs() <= scales.repeat_interleave(GROUP_SIZE, 1) / 2 + 1e-6).all()


def test_compact_codes_equal_released_codes(quantized):
    _, _, config, out = quantized
    released, compact = out["released"][1], out["compact"][1]
    for prefix in quant_linear_names(full_rank(config)):
        if not is_spiked(prefix):  # down_proj: float weight, no scales
            assert torch.equal(compact[prefix + ".weight"], released[prefix + ".weight"])
            continue
        assert compact[prefix + ".weight_overflow_codes"].numel() == 0  # fresh scales: codes fit ±127
        codes, scales = linear_codes(compact, prefix)
        released_codes, released_scales = linear_codes(released, prefix)
        assert torch.equal(codes, released_codes) and torch.equal(scales, released_scales)


def test_compact_overflow_coo_keeps_exact_codes():
    weight = torch.randn(4, 2 * GROUP_SIZE)
    scales = weight.view(4, 2, GROUP_SIZE).abs().amax(-1) / 127
    weight[2, 130] = -203 * scales[2, 1]
    weight[0, 5] = 128.4 * scales[0, 0]
    parts = w8aspike_linear_tensors("m.attn.q_proj", weight, scales, "compact")
    assert parts["m.attn.q_proj.weight"].dtype == torch.int8
    assert parts["m.attn.q_proj.weight"][2, 130].item() == -127 and parts["m.attn.q_proj.weight"][0, 5] == 127
    assert parts["m.attn.q_proj.weight_overflow_rows"].tolist() == [0, 2]
    assert parts["m.attn.q_proj.weight_overflow_cols"].tolist() == [5, 130]
    assert parts["m.attn.q_proj.weight_overflow_codes"].tolist() == [128, -203]
    assert parts["m.attn.q_proj.weight_overflow_codes"].dtype == torch.int16
    codes, got_scales = linear_codes(parts, "m.attn.q_proj")
    assert torch.equal(codes, weight_codes(weight, scales)) and torch.equal(got_scales, scales)


def test_tiny_w8aspike_writer_layouts_hold_one_model(tmp_path):
    spec = TinySpec()
    released = save_w8aspike_checkpoint(tmp_path / "r", spec, "released", seed=3)
    compact = save_w8aspike_checkpoint(tmp_path / "c", spec, "compact", seed=3, shards=2)
    config = spec.config()
    assert_layout(released, config, "released")
    assert_layout(compact, config, "compact")
    assert read_tensors(tmp_path / "c").keys() == compact.keys()
    beyond = total = 0
    for prefix in filter(is_spiked, quant_linear_names(full_rank(config))):
        codes, scales = linear_codes(released, prefix)
        assert torch.equal(linear_codes(compact, prefix)[0], codes)
        beyond += int((codes.abs() > 127).sum())
        total += codes.numel()
    assert 0.005 < beyond / total < 0.02  # like the released checkpoint: about 1% of codes beyond ±127
    assert json.loads((tmp_path / "r" / "config.json").read_text()).get("gate_low_rank_dim", "absent") == "absent"


def test_bf16_bin_source(tiny_checkpoint, tmp_path):
    src, float_tensors, config = tiny_checkpoint
    bf16 = tmp_path / "bf16"
    shutil.copytree(src, bf16, ignore=shutil.ignore_patterns("*.safetensors*"))
    torch.save({n: t.bfloat16() for n, t in float_tensors.items()}, bf16 / "pytorch_model.bin")
    quantize_checkpoint(bf16, tmp_path / "out", "compact")
    tensors = read_tensors(tmp_path / "out")
    assert_layout(tensors, config, "compact")
    prefix = "model.layers.1.attn.q_proj"
    weight = float_tensors[prefix + ".weight"].bfloat16().float()
    assert torch.equal(tensors[prefix + ".bias"], float_tensors[prefix + ".bias"].bfloat16().float())
    assert torch.equal(linear_codes(tensors, prefix)[0], weight_codes(weight, tensors[prefix + ".weight_scale"]))


def test_bad_sources_fail_naming_the_problem(tiny_checkpoint, quantized, tmp_path):
    src, float_tensors, _ = tiny_checkpoint
    with pytest.raises(QuantizerError, match="no config.json"):
        quantize_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(QuantizerError, match="not a directory"):
        quantize_checkpoint(tmp_path / "nowhere", tmp_path / "out")

    other = tmp_path / "other"
    shutil.copytree(src, other)
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(QuantizerError, match="model_type is 'qwen2'"):
        quantize_checkpoint(other, tmp_path / "out")

    missing = tmp_path / "missing"
    shutil.copytree(src, missing, ignore=shutil.ignore_patterns("model*"))
    incomplete = {n: t for n, t in float_tensors.items() if n != "model.layers.2.attn.gk_proj.1.bias"}
    torch.save(incomplete, missing / "pytorch_model.bin")
    with pytest.raises(QuantizerError, match=r"'model.layers.2.attn.gk_proj.1.bias' with shape \(64,\) is missing"):
        quantize_checkpoint(missing, tmp_path / "out")

    shutil.rmtree(missing)
    shutil.copytree(src, missing, ignore=shutil.ignore_patterns("model*"))
    with pytest.raises(QuantizerError, match=r"no \*.safetensors or \*.bin"):
        quantize_checkpoint(missing, tmp_path / "out")

    with pytest.raises(QuantizerError, match="already a W8ASpike checkpoint"):
        quantize_checkpoint(quantized[3]["released"][0], tmp_path / "out")
    with pytest.raises(QuantizerError, match="quantization_config"):
        quantize_checkpoint(quantized[3]["compact"][0], tmp_path / "out")
    with pytest.raises(QuantizerError, match="new or empty directory"):
        quantize_checkpoint(src, quantized[3]["released"][0])


def test_main_reports_errors_and_argument_conflicts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path / "out"), "--k", "2", "--calibrate-k", "prompts.txt"])
    assert "exclude each other" in capsys.readouterr().err


def test_calibrate_k_picks_the_least_logit_error(tiny_checkpoint, tmp_path, capsys):
    src = tiny_checkpoint[0]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("5 17 42 99 3 250 31 7\n\n64 128 11 300 45 8\n")
    assert main([str(src), str(tmp_path / "out"), "--layout", "compact", "--calibrate-k", str(prompts)]) == 0
    captured = capsys.readouterr()  # not a tty: the progress bars still go to stderr without failing
    assert "quantizing" in captured.err and "calibrating k" in captured.err
    errors = {float(line.split()[0][2:]): float(line.split()[-1]) for line in captured.err.splitlines()
              if line.startswith("k=")}
    assert sorted(errors) == [2.0, 2.5, 3.0, 3.5, 4.0]
    best = min(errors, key=errors.get)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["k"] == best
    assert f"k = {best}" in captured.out

    prompts.write_text("5 17 x\n")
    with pytest.raises(SystemExit):
        main([str(src), str(tmp_path / "out2"), "--calibrate-k", str(prompts)])
    assert "prompts.txt:1: expected space-separated token ids" in capsys.readouterr().err


def test_command_runs_without_a_tty(tmp_path):
    src = tmp_path / "src"
    save_checkpoint(src, TinySpec(num_hidden_layers=2))
    result = subprocess.run(
        [sys.executable, "-m", "vllm_neuronchip.quantization.quantizer", str(src), str(tmp_path / "dst"),
         "--layout", "released", "--shard-gib", "0.0005"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "quantizing" in result.stderr and (tmp_path / "dst" / "model.safetensors.index.json").exists()
    assert_layout(read_tensors(tmp_path / "dst"), TinySpec(num_hidden_layers=2).config(), "released")
