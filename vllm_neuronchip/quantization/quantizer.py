"""`python -m vllm_neuronchip.quantization.quantizer SRC DST --layout {released,compact}`: a float SpikingBrain
checkpoint (safetensors or .bin, bf16/fp32, low-rank gate) to W8ASpike, with an optional k calibration."""

import argparse
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vllm_neuronchip.model_executor.checkpoint import (
    IGNORED_SUFFIXES,
    CheckpointMismatchError,
    checked_tensors,
    checkpoint_tensor_names,
    expected_tensor_shapes,
)
from vllm_neuronchip.model_executor.config import GLAswaConfig
from vllm_neuronchip.model_executor.reference import reference_logits
from vllm_neuronchip.quantization.checkpoint import (
    COMPACT_SCALE,
    LAYOUTS,
    RELEASED_SCALES,
    full_rank,
    quant_linear_names,
    quantization_config,
    w8aspike_linear_tensors,
)
from vllm_neuronchip.quantization.reference import DEFAULT_K, GROUP_SIZE, w8aspike_reference_logits

K_GRID = (2.0, 2.5, 3.0, 3.5, 4.0)
"""The k values `--calibrate-k` tries (the paper's sweep, spec §9.3 Table 11)."""
GATE_PARTS = ("gk_proj.0.weight", "gk_proj.1.weight", "gk_proj.1.bias")


class QuantizerError(ValueError):
    """The source checkpoint or the arguments cannot be quantized; the message says why."""


def read_source_config(src: Path) -> dict:
    """config.json of a float SpikingBrain checkpoint, refusing other models and W8ASpike checkpoints."""
    path = src / "config.json"
    if not src.is_dir():
        raise QuantizerError(f"source {src} is not a directory")
    if not path.is_file():
        raise QuantizerError(f"source {src} has no config.json")
    config_json = json.loads(path.read_text())
    if config_json.get("model_type") != "gla_swa":
        raise QuantizerError(
            f"{path}: model_type is {config_json.get('model_type')!r}, expected 'gla_swa' (SpikingBrain-7B)"
        )
    if config_json.get("quantization_config"):
        raise QuantizerError(f"{path} has a quantization_config: the source must be a float checkpoint")
    return config_json


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors if there are any, else .bin."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise QuantizerError(f"{directory} has no *.safetensors or *.bin weight files")
    return files


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time; `.bin` only through `torch.load(weights_only=True)` (spec D4)."""
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            yield from torch.load(file, map_location="cpu", weights_only=True, mmap=True).items()


def read_tensors(directory: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, by name."""
    return dict(iter_tensors(weight_files(Path(directory))))


def source_config(src: Path, names: set[str]) -> GLAswaConfig:
    """The float config, full rank if the checkpoint stores a full-rank gate; checks the tensor names."""
    config = GLAswaConfig.from_pretrained(src)
    if any(n.endswith((RELEASED_SCALES, COMPACT_SCALE)) for n in names):
        raise QuantizerError(f"{src} is already a W8ASpike checkpoint (it has weight scales)")
    if any(n.endswith(".attn.gk_proj.weight") for n in names):
        config = full_rank(config)
    expected = expected_tensor_shapes(config)
    missing = sorted(set(expected) - names)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise QuantizerError(
            f"{src}: tensor {missing[0]!r} with shape {expected[missing[0]]} is missing from the checkpoint{more}"
        )
    unexpected = sorted(n for n in names - set(expected) if not n.endswith(IGNORED_SUFFIXES))
    if unexpected:
        raise QuantizerError(f"{src}: unexpected tensor {unexpected[0]!r}; not part of the float SpikingBrain layout")
    return config


def absmax_scales(weight: torch.Tensor) -> torch.Tensor:
    """σ = amax|W_group| / 127 per (output, group of 128 inputs), float32 [out, in/128]; 1 for all-zero groups."""
    out, in_features = weight.shape
    if in_features % GROUP_SIZE:
        raise QuantizerError(f"{in_features} input features are not a multiple of the group size {GROUP_SIZE}")
    scales = weight.float().view(out, in_features // GROUP_SIZE, GROUP_SIZE).abs().amax(-1) / 127
    return torch.where(scales > 0, scales, torch.ones_like(scales))


class ShardWriter:
    """Writes tensors into safetensors shards of about `shard_bytes`, then names them and the index as HF does."""

    def __init__(self, directory: Path, shard_bytes: int):
        self.directory, self.shard_bytes = directory, shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.shards: list[list[str]] = []

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        self.pending |= {name: t.contiguous() for name, t in tensors.items()}
        if sum(t.numel() * t.element_size() for t in self.pending.values()) >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            save_file(self.pending, self._part(len(self.shards)), metadata={"format": "pt"})
            self.shards.append(list(self.pending))
            self.pending = {}

    def _part(self, k: int) -> Path:
        return self.directory / f"model-part-{k:05d}.safetensors.tmp"

    def close(self) -> list[str]:
        self.flush()
        n = len(self.shards)
        files = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" if n > 1 else "model.safetensors" for k in range(n)]
        for k, file in enumerate(files):
            self._part(k).rename(self.directory / file)
        if n > 1:
            weight_map = {name: file for file, names in zip(files, self.shards) for name in names}
            index = {"metadata": {}, "weight_map": weight_map}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return files


def quantize_checkpoint(
    src: Path | str, dst: Path | str, layout: str = "released", k: float = DEFAULT_K, *, shard_bytes: int = 4 << 30
) -> dict:
    """Write the W8ASpike checkpoint of `src` to `dst` (a new or empty directory); return its config.json.

    Weights get symmetric per-group scales σ = amax|W_group| / 127, so freshly quantized codes fit ±127
    (the compact overflow lists stay empty). The released W8ASpike checkpoint has calibrated scales
    instead, with about 1% of its codes beyond ±127 (spec §7.2); this does not reproduce that calibration.
    The low-rank GLA gate becomes the full-rank one W8ASpike uses: W = W1 @ W0 (in float64), bias b1.
    Every float tensor is written as float32, in safetensors shards of about `shard_bytes`.
    """
    src, dst = Path(src), Path(dst)
    if layout not in LAYOUTS:
        raise QuantizerError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    config_json = read_source_config(src)
    files = weight_files(src)
    config = source_config(src, checkpoint_tensor_names(src))
    if dst.resolve() == src.resolve() or (dst.exists() and any(dst.iterdir())):
        raise QuantizerError(f"destination {dst} must be a new or empty directory")
    dst.mkdir(parents=True, exist_ok=True)

    quant_linears = set(quant_linear_names(full_rank(config)))
    expected = expected_tensor_shapes(config)
    writer, gates = ShardWriter(dst, shard_bytes), {}
    progress = tqdm(checked_tensors(iter_tensors(files), expected), total=len(expected), desc="quantizing",
                    unit="tensor", file=sys.stderr)
    for name, tensor in progress:
        if name.endswith(GATE_PARTS):  # low-rank gate: wait for its three parts, then merge them
            layer = name[: name.index("gk_proj.")]
            parts = gates.setdefault(layer, {})
            parts[name[len(layer):]] = tensor
            if len(parts) < len(GATE_PARTS):
                continue
            parts = gates.pop(layer)
            writer.add({layer + "gk_proj.bias": parts["gk_proj.1.bias"].float()})
            name = layer + "gk_proj.weight"
            tensor = (parts["gk_proj.1.weight"].double() @ parts["gk_proj.0.weight"].double()).float()
        prefix = name.removesuffix(".weight")
        if prefix in quant_linears:
            weight = tensor.float()
            writer.add(w8aspike_linear_tensors(prefix, weight, absmax_scales(weight), layout))
        else:
            writer.add({name: tensor.float()})
    written = writer.close()

    for file in src.iterdir():  # tokenizer, generation config, remote-code modules, ...
        weights = file.suffix in (".safetensors", ".bin") or file.name.endswith(".index.json")
        if file.is_file() and not weights and file.name != "config.json":
            shutil.copy2(file, dst / file.name)
    config_json.pop("gate_low_rank_dim", None)
    if layout == "compact":
        config_json |= {"quantization_config": quantization_config(k), "gate_low_rank_dim": None}
    (dst / "config.json").write_text(json.dumps(config_json, indent=2))
    print(f"wrote the {layout} W8ASpike checkpoint to {dst} ({len(written)} weight file(s))", file=sys.stderr)
    return config_json


def read_prompts(path: Path | str, vocab_size: int) -> list[list[int]]:
    """Token ids, one prompt per line, space separated; blank lines are skipped."""
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids = [int(t) for t in line.split()]
        except ValueError:
            raise QuantizerError(f"{path}:{number}: expected space-separated token ids, got {line[:60]!r}") from None
        if not all(0 <= t < vocab_size for t in ids):
            raise QuantizerError(f"{path}:{number}: token ids must be in [0, {vocab_size})")
        prompts.append(ids)
    if not prompts:
        raise QuantizerError(f"{path} holds no prompts")
    return prompts


def calibrate_k(
    float_tensors: dict, w8aspike_tensors: dict, config: GLAswaConfig, prompts: list[list[int]], grid=K_GRID
) -> tuple[float, dict[float, float]]:
    """The k of `grid` with the least mean squared error between float and W8ASpike reference logits
    over every position of `prompts`; returns it and each k's error.

    A larger k means finer activation steps, so this error usually falls as k grows and the largest k
    wins: it measures fidelity only, not the sparsity (energy) that a smaller k buys (spec §9.3, Table 11).
    Runs the pure-torch float64 reference: fine for small models, about 16 bytes per parameter and
    very slow for the 7B model.
    """
    targets = [reference_logits(p, float_tensors, config) for p in prompts]
    errors = {}
    for k in tqdm(grid, desc="calibrating k", file=sys.stderr):
        logits = [w8aspike_reference_logits(p, w8aspike_tensors, config, k) for p in prompts]
        errors[k] = float(torch.cat([(got - want).pow(2) for got, want in zip(logits, targets)]).mean())
    return min(errors, key=errors.get), errors


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m vllm_neuronchip.quantization.quantizer")
    parser.description = "Quantize a float SpikingBrain checkpoint to W8ASpike (spec §2.2, §7, D5-D7)."
    parser.add_argument("src", help="float checkpoint directory (config.json with model_type gla_swa)")
    parser.add_argument("dst", help="output directory (new or empty)")
    parser.add_argument("--layout", choices=LAYOUTS, default="released",
                        help="released: float32 weights + weight_quantizer.scales; compact: int8 codes + overflow")
    parser.add_argument("--k", type=float, default=None, help=f"spike threshold divisor (default {DEFAULT_K})")
    parser.add_argument("--calibrate-k", metavar="PROMPTS_FILE",
                        help=f"pick k from {list(K_GRID)} by the logits' MSE against the float model on these "
                        "prompts (token ids, one prompt per line); fidelity only, so larger k usually wins; runs the "
                        "fp64 reference: small models only")
    parser.add_argument("--shard-gib", type=float, default=4.0, help="approximate size of each output file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k is not None and args.calibrate_k:
        parser.error("--k and --calibrate-k exclude each other")
    k = DEFAULT_K if args.k is None else args.k
    src, dst = Path(args.src), Path(args.dst)
    try:
        if args.calibrate_k:
            read_source_config(src)
            config = GLAswaConfig.from_pretrained(src)
            prompts = read_prompts(args.calibrate_k, config.vocab_size)
        config_json = quantize_checkpoint(src, dst, args.layout, k, shard_bytes=int(args.shard_gib * (1 << 30)))
        if args.calibrate_k:
            k, errors = calibrate_k(read_tensors(src), read_tensors(dst), config, prompts)
            for candidate, error in errors.items():
                print(f"k={candidate:<4} logits MSE {error:.6g}", file=sys.stderr)
            if args.layout == "compact":
                config_json["quantization_config"]["k"] = k
                (dst / "config.json").write_text(json.dumps(config_json, indent=2))
    except (QuantizerError, CheckpointMismatchError) as error:
        parser.exit(2, f"error: {error}\n")
    where = "recorded in config.json" if args.layout == "compact" else "the released layout cannot record it"
    print(f"k = {k} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
