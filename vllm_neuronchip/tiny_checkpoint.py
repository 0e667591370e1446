"""Builds tiny random SpikingBrain checkpoints in the released layout, with a tokenizer and chat template.

The embedded default behind the demo and the tests: no downloads. The directory looks like a
released one (config.json with `auto_map`, original tensor names, safetensors or `.bin` shards).
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vllm_neuronchip.model_executor.checkpoint import expected_tensor_shapes
from vllm_neuronchip.model_executor.config import GLAswaConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOKENIZER_CORPUS = (
    "Spiking neurons fire when their membrane potential crosses a threshold. "
    "Gated linear attention keeps a constant-size recurrent state per layer, "
    "while sliding-window attention looks back over a fixed number of tokens. "
    "The quick brown fox jumps over the lazy dog. Hello, world! How are you today? "
    "Neuromorphic chips accumulate events instead of multiplying dense matrices. "
    "0123456789 + - * / = ( ) [ ] { } < > . , ; : ' \" ! ? "
)
AUTO_MAP = {
    "AutoConfig": "configuration_gla_swa.GLAswaConfig",
    "AutoModelForCausalLM": "modeling_gla_swa.GLAswaForCausalLM",
}


@dataclass
class TinySpec:
    """Sizes of a tiny model; head_dim 64 is the smallest the CPU attention kernel accepts."""

    vocab_size: int = 384
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 256
    sliding_window: int = 32
    gate_low_rank_dim: int | None = 16
    max_position_embeddings: int = 2048
    seed: int = 0
    extra_config: dict = field(default_factory=dict)

    def config(self) -> GLAswaConfig:
        sizes = {k: v for k, v in asdict(self).items() if k not in ("seed", "extra_config")}
        return GLAswaConfig(**sizes, **self.extra_config)


def random_tensors(config: GLAswaConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random fp32 weights in the original layout, scaled so activations and logits stay O(1)
    and greedy choices are not near-ties."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(expected_tensor_shapes(config).items()):
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("bias"):
            t = 0.5 * torch.randn(shape, generator=generator)
        elif name == "model.embeddings.weight":
            t = torch.randn(shape, generator=generator)
        else:
            gain = 4.0 if name == "lm_head.weight" else 1.0
            t = gain * torch.randn(shape, generator=generator) / math.sqrt(shape[-1])
        tensors[name] = t.contiguous()
    return tensors


def build_tokenizer(vocab_size: int):
    """Byte-level BPE trained on a fixed corpus, Qwen-style special tokens and ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator([TOKENIZER_CORPUS] * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        bos_token="<|im_start|>", chat_template=CHATML_TEMPLATE, model_max_length=1 << 20,
    )


def save_checkpoint(
    directory: Path | str, spec: TinySpec = TinySpec(), *, weight_format: str = "safetensors", shards: int = 1
) -> dict[str, torch.Tensor]:
    """Write config, tokenizer and weights ('safetensors' or 'bin', in `shards` files); return the tensors."""
    config = write_model_files(directory, spec)
    tensors = random_tensors(config, spec.seed)
    write_weights(directory, tensors, weight_format=weight_format, shards=shards)
    return tensors


def write_model_files(directory: Path | str, spec: TinySpec, config_overrides: dict | None = None) -> GLAswaConfig:
    """Write tokenizer, config.json (as released, plus `config_overrides`) and generation_config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = spec.config()
    tokenizer = build_tokenizer(spec.vocab_size)
    tokenizer.save_pretrained(directory)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config_json = config.to_diff_dict() | {
        "architectures": ["GLAswaForCausalLM"], "auto_map": AUTO_MAP, "torch_dtype": "float32",
        "bos_token_id": eos, "eos_token_id": eos, "transformers_version": "4.45.0",
    }
    # Keys the released config.json does not carry: derived or module constants (spec §1.1).
    for key in ("dtype", "head_dim", "layer_types", "gate_logit_normalizer", "quant_weight_group_size"):
        config_json.pop(key, None)
    if config.gate_low_rank_dim == GLAswaConfig.gate_low_rank_dim:
        config_json.pop("gate_low_rank_dim")
    config_json |= config_overrides or {}
    (directory / "config.json").write_text(json.dumps(config_json, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": eos, "eos_token_id": eos}))
    return config


def write_weights(
    directory: Path | str, tensors: dict[str, torch.Tensor], *, weight_format: str = "safetensors", shards: int = 1
) -> None:
    """Write tensors as released checkpoints do: one file, or `shards` files plus an index."""
    from safetensors.torch import save_file

    directory = Path(directory)
    names = list(tensors)
    suffix = "safetensors" if weight_format == "safetensors" else "bin"
    prefix = "model" if weight_format == "safetensors" else "pytorch_model"
    weight_map = {}
    for k in range(shards):
        part = {n: tensors[n] for n in names[k::shards]}
        file = f"{prefix}-{k + 1:05d}-of-{shards:05d}.{suffix}" if shards > 1 else f"{prefix}.{suffix}"
        if weight_format == "safetensors":
            save_file(part, directory / file, metadata={"format": "pt"})
        else:
            torch.save(part, directory / file)
        weight_map |= dict.fromkeys(part, file)
    if shards > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / f"{prefix}.{suffix}.index.json").write_text(json.dumps(index, indent=2))
