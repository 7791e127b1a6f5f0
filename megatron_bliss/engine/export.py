"""``megatron-bliss export-hf``: a ZeRO checkpoint -> a Hugging Face model directory.

The fp32 master weights are consolidated with DeepSpeed's ``zero_to_fp32`` reader (any ZeRO stage),
loaded strictly into a model built from the full config stored in the checkpoint's ``meta.json``
(every dimension explicit, the padded vocabulary kept), and saved as safetensors with the run's
tokenizer. ``load_model`` gives the same model in memory, from an HF dir or a checkpoint (how
``select --target-model`` reads one).

The checkpoint is verified first (``checkpoint_integrity``: a checkpoints dir gives its newest
complete step folder) and its shards are read weights-only (``safe_load``): a file that needs
any other type is refused with one line unless ``trust`` (``--trust-checkpoint``).

    megatron-bliss export-hf --checkpoint RUN_DIR/checkpoints --output RUN_DIR/hf
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from megatron_bliss.engine.checkpoint import read_meta, resolve_checkpoint
from megatron_bliss.engine.safe_load import checkpoint_reading
from megatron_bliss.errors import ConfigError, InputError, MissingFileError
from megatron_bliss.models.loading import is_hf_directory, model_from_state_dict

logger = logging.getLogger(__name__)


def consolidated_state_dict(
    checkpoint_dir: Path, tag: str, trust: bool | None = None
) -> dict[str, torch.Tensor]:
    """fp32 weights of every parameter, gathered from the ranks' ZeRO shards.

    DeepSpeed's reader unpickles optimizer objects with the full unpickler; inside
    ``checkpoint_reading`` those loads are weights-only with DeepSpeed's allow-list instead.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with checkpoint_reading(trust):
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def model_config_of(meta: dict, checkpoint_dir: Path, tag: str) -> dict:
    """The model config a checkpoint's ``meta.json`` records, or one line saying it has none."""
    config = meta.get("model_config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        raise InputError(
            f"{checkpoint_dir / tag / 'meta.json'}: no model_config "
            "(not a checkpoint written by megatron-bliss pretrain)"
        )
    return config


def load_checkpoint_model(
    path: str | Path, trust: bool | None = None
) -> tuple[torch.nn.Module, dict]:
    checkpoint_dir, tag = resolve_checkpoint(path)
    meta = read_meta(checkpoint_dir, tag)
    config = model_config_of(meta, checkpoint_dir, tag)
    state = consolidated_state_dict(checkpoint_dir, tag, trust)
    return model_from_state_dict(config, state), meta


def load_model(path: str | Path, trust: bool | None = None) -> torch.nn.Module:
    """A causal LM for inference from an HF directory or a DeepSpeed checkpoint (fp32, eval);
    ``trust`` None: the command's ``--trust-checkpoint`` (``safe_load.trusting``)."""
    path = Path(path)
    if is_hf_directory(path):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=False
        )
        return model.eval()
    if not path.exists():
        raise MissingFileError(f"{path}: model path not found")
    model, _ = load_checkpoint_model(path, trust)
    return model


def checkpoint_tokenizer(checkpoint: str | Path) -> str | None:
    """The tokenizer a DeepSpeed checkpoint's run used (its copy in the run directory, else the
    one named in the checkpoint's metadata), or None when it cannot be told."""
    try:
        checkpoint_dir, tag = resolve_checkpoint(checkpoint, verify=False)  # metadata only
        return _tokenizer_source(read_meta(checkpoint_dir, tag), checkpoint_dir, None)
    except (FileNotFoundError, ValueError):
        return None


def _tokenizer_source(meta: dict, checkpoint_dir: Path, tokenizer: str | None) -> str | None:
    if tokenizer:
        return tokenizer
    run_copy = checkpoint_dir.parent / "tokenizer"
    if run_copy.is_dir():
        return str(run_copy)
    return meta.get("tokenizer")


def check_output(output: Path) -> None:
    """The output may be new, empty, or an earlier export (replaced); anything else is refused,
    so a mistyped ``--output`` (a run directory, ``.``) is never deleted."""
    if output.is_file() or output.is_symlink():
        raise ConfigError(f"{output}: --output exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / "config.json").is_file():
        raise ConfigError(
            f"{output}: --output is a non-empty directory that is not a Hugging Face model "
            "(no config.json); refusing to replace it"
        )


def export_hf(
    checkpoint: str | Path,
    output: str | Path,
    tokenizer: str | None = None,
    trust: bool | None = None,
) -> Path:
    """Write ``output`` (config.json, model.safetensors, tokenizer) atomically; returns it."""
    from megatron_bliss.data.tokenizer import load_tokenizer

    output = Path(output)
    check_output(output)
    checkpoint_dir, tag = resolve_checkpoint(checkpoint)
    meta = read_meta(checkpoint_dir, tag)
    config = model_config_of(meta, checkpoint_dir, tag)
    source = _tokenizer_source(meta, checkpoint_dir, tokenizer)
    # Loaded before the (slow) consolidation, with the project's loader: a directory, hub name,
    # tokenizers *.json or sentencepiece *.model, and one-line errors.
    loaded_tokenizer = load_tokenizer(source) if source else None
    model = model_from_state_dict(config, consolidated_state_dict(checkpoint_dir, tag, trust))
    model.config.dtype = torch.float32
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if loaded_tokenizer is not None:
            loaded_tokenizer.save_pretrained(staging)
        else:
            logger.warning("no tokenizer found for %s: exported without one", checkpoint_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    logger.info("exported %s/%s (step %s) to %s", checkpoint_dir, tag, meta.get("step"), output)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="RUN_DIR/checkpoints, one step folder, or RUN_DIR"
    )
    parser.add_argument("--output", required=True, help="Hugging Face directory to write")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer to include: directory, hub name, *.json or *.model (default: the run's copy)",
    )


def run(args: argparse.Namespace) -> int:
    export_hf(args.checkpoint, args.output, args.tokenizer)
    print(args.output)
    return 0
