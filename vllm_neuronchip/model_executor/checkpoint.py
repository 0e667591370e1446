"""The released SpikingBrain checkpoint layout (spec §2.1), and strict checking of loaded tensors.

Every expected tensor name and shape is derived from config.json, so a checkpoint that does not
match fails with the tensor's name and both shapes instead of a late shape error inside vLLM.
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from vllm_neuronchip.model_executor.config import SWA_LAYER, GLAswaConfig

# Non-persistent buffers some exporters still save; they carry no weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointMismatchError(ValueError):
    """A checkpoint tensor is missing, unexpected or has the wrong shape."""


def expected_tensor_shapes(config: GLAswaConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a float checkpoint of this config (original names)."""
    hidden, d = config.hidden_size, config.head_dim
    q_width, kv_width = config.num_attention_heads * d, config.num_key_value_heads * d
    shapes = {
        "model.embeddings.weight": (config.vocab_size, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (config.vocab_size, hidden),
    }
    for i, layer_type in enumerate(config.layer_types):
        p = f"model.layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (hidden,),
            p + "mlp_norm.weight": (hidden,),
            p + "attn.q_proj.weight": (q_width, hidden),
            p + "attn.q_proj.bias": (q_width,),
            p + "attn.k_proj.weight": (kv_width, hidden),
            p + "attn.k_proj.bias": (kv_width,),
            p + "attn.v_proj.weight": (kv_width, hidden),
            p + "attn.v_proj.bias": (kv_width,),
            p + "attn.o_proj.weight": (hidden, q_width),
            p + "mlp.gate_proj.weight": (config.intermediate_size, hidden),
            p + "mlp.up_proj.weight": (config.intermediate_size, hidden),
            p + "mlp.down_proj.weight": (hidden, config.intermediate_size),
        }
        if layer_type == SWA_LAYER:
            continue
        shapes[p + "attn.g_norm.weight"] = (d,)
        rank = config.gate_low_rank_dim
        if rank:
            shapes |= {
                p + "attn.gk_proj.0.weight": (rank, hidden),
                p + "attn.gk_proj.1.weight": (kv_width, rank),
                p + "attn.gk_proj.1.bias": (kv_width,),
            }
        else:
            shapes |= {p + "attn.gk_proj.weight": (kv_width, hidden), p + "attn.gk_proj.bias": (kv_width,)}
    if config.tie_word_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def checked_tensors(
    weights: Iterable[tuple[str, torch.Tensor]], expected: dict[str, tuple[int | None, ...]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield checkpoint tensors after checking each name and shape (a None dimension has any length);
    raise on the first mismatch, and after the last tensor if any expected tensor never came."""
    missing = dict(expected)
    for name, tensor in weights:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name not in expected:
            raise CheckpointMismatchError(
                f"unexpected tensor {name!r} with shape {tuple(tensor.shape)} in the checkpoint; "
                "it is not part of the SpikingBrain layout for this config.json"
            )
        shape = expected[name]
        if len(tensor.shape) != len(shape) or any(e is not None and e != n for e, n in zip(shape, tensor.shape)):
            raise CheckpointMismatchError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint, "
                f"but config.json implies {expected[name]}"
            )
        missing.pop(name, None)
        yield name, tensor
    if missing:
        names = sorted(missing)
        raise CheckpointMismatchError(
            f"{len(names)} tensor(s) missing from the checkpoint, e.g. {names[0]!r} "
            f"with shape {missing[names[0]]}: {names[:8]}"
        )


def checkpoint_tensor_names(model_dir: str | Path) -> set[str]:
    """Tensor names of a local checkpoint, read from index files or file headers (no weights loaded);
    empty for a directory without weights (e.g. `--load-format dummy`) or a hub id."""
    directory = Path(model_dir)
    if not directory.is_dir():
        return set()
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).exists():
            return set(json.loads((directory / index).read_text())["weight_map"])
    names = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            names |= set(f.keys())
    for file in directory.glob("*.bin"):
        names |= set(torch.load(file, map_location="cpu", mmap=True, weights_only=True))
    return names
