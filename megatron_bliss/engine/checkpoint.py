"""Checkpoints in DeepSpeed's layout plus what exact resume needs beyond it.

``RUN_DIR/checkpoints/global_stepN/`` holds DeepSpeed's model/optimizer shards, and, written before
them, ``meta.json`` (step, consumed samples, world size, ZeRO stage, the model's full Hugging Face
config so export never relies on a default) and ``rng_rank{r}.pt`` (each rank's RNG states, only
tensors and numbers so ``torch.load(weights_only=True)`` reads them). DeepSpeed writes ``latest``
last, so a save cut short by a kill leaves ``latest`` on the previous complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_bliss.config import ConfigError
from megatron_bliss.utils.io import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """``(checkpoints_dir, tag)`` for a checkpoints dir with ``latest``, a step folder, or a run dir."""
    path = Path(path)
    if (path / "checkpoints" / "latest").exists():
        path = path / "checkpoints"
    if (path / "latest").exists():
        tag = (path / "latest").read_text().strip()
        if not (path / tag).is_dir():
            raise FileNotFoundError(f"{path}/latest: names missing step folder '{tag}'")
        return path, tag
    if path.is_dir() and any(path.glob("*model_states.pt")):
        return path.parent, path.name
    raise FileNotFoundError(f"{path}: not a DeepSpeed checkpoint (no 'latest' file or step folder)")


def read_meta(checkpoint_dir: Path, tag: str) -> dict[str, Any]:
    meta_path = checkpoint_dir / tag / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: checkpoint metadata not found")
    return json.loads(meta_path.read_text())


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "gauss": float(numpy_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    engine, checkpoint_dir: Path, step: int, meta: dict[str, Any], rank: int, keep_last: int
) -> Path:
    """Write step ``step`` on every rank (collective), then prune to the last ``keep_last``."""
    import torch.distributed as dist

    tag = tag_for(step)
    folder = checkpoint_dir / tag
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"rng_rank{rank}.pt") as temporary:
        torch.save(rng_state(), temporary)
    if rank == 0:
        atomic_write_json(folder / "meta.json", meta)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state={"meta": meta})
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        prune_checkpoints(checkpoint_dir, keep_last, protect=tag)
    logger.info("checkpoint saved: %s", folder)
    return folder


def prune_checkpoints(checkpoint_dir: Path, keep_last: int, protect: str) -> None:
    tags = sorted(
        (int(match.group(1)), entry.name)
        for entry in checkpoint_dir.iterdir()
        if entry.is_dir() and (match := TAG_PATTERN.match(entry.name))
    )
    for _, name in tags[:-keep_last]:
        if name != protect:
            shutil.rmtree(checkpoint_dir / name, ignore_errors=True)


def check_compatible(meta: dict[str, Any], world_size: int, zero_stage: int, where: Path) -> None:
    """Stop with one line when the checkpoint's partitioning does not match this run."""
    if int(meta.get("world_size", world_size)) != world_size:
        raise ConfigError(
            f"{where}: checkpoint was written by {meta['world_size']} ranks, this run has "
            f"{world_size}; resume with the same number of ranks, or export it "
            f"(megatron-bliss export-hf) and start a new run with model.init_from=EXPORTED_DIR"
        )
    if int(meta.get("zero_stage", zero_stage)) != zero_stage:
        raise ConfigError(
            f"{where}: checkpoint was written with ZeRO stage {meta['zero_stage']}, this run uses "
            f"stage {zero_stage}; resume with the same stage or export and use model.init_from"
        )


def load_checkpoint(engine, checkpoint_dir: Path, tag: str, rank: int) -> dict[str, Any]:
    """Restore model, optimizer, step and this rank's RNG; returns the checkpoint's meta."""
    meta = read_meta(checkpoint_dir, tag)
    load_path, _ = engine.load_checkpoint(
        str(checkpoint_dir),
        tag=tag,
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
    )
    if load_path is None:
        raise FileNotFoundError(f"{checkpoint_dir / tag}: DeepSpeed could not load the checkpoint")
    rng_path = checkpoint_dir / tag / f"rng_rank{rank}.pt"
    if rng_path.exists():
        set_rng_state(torch.load(rng_path, weights_only=True))
    else:
        logger.warning("%s missing: RNG state not restored", rng_path)
    return meta
