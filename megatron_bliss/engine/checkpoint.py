"""Checkpoints in DeepSpeed's layout plus what exact resume needs beyond it.

``RUN_DIR/checkpoints/global_stepN/`` holds DeepSpeed's model/optimizer shards, and, written before
them, ``meta.json`` (step, consumed samples, world size, ZeRO stage, the model's full Hugging Face
config so export never relies on a default) and ``rng_rank{r}.pt`` (each rank's RNG states, only
tensors and numbers so ``torch.load(weights_only=True)`` reads them). After a barrier (every
rank's files written) rank 0 adds ``complete.json`` (each file's size) and then moves ``latest``,
so a save cut short by a kill is never taken for a checkpoint; loading verifies the folder and
falls back to the newest complete one (``checkpoint_integrity``). Every read goes through
``safe_load.checkpoint_reading``: weights-only unpickling unless the checkpoint is trusted.

Elastic resume: a checkpoint written by another number of ranks (ZeRO's optimizer shards are cut
per rank) is converted once by DeepSpeed's ``ds_to_universal`` into ``<tag>_universal/`` next to
it (one file per parameter and state, independent of the partitioning) and loaded with
``"checkpoint": {"load_universal": true}``. Such folders are never step checkpoints: pruning a tag
removes its universal copy too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import random
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from megatron_bliss.config import ConfigError
from megatron_bliss.engine import checkpoint_integrity as integrity
from megatron_bliss.engine.checkpoint_integrity import TAG_PATTERN, has_step_folders
from megatron_bliss.engine.distributed import (
    DistributedContext,
    rank0_failure_note,
    wait_for_rank0,
)
from megatron_bliss.engine.safe_load import UntrustedCheckpoint, checkpoint_reading, load_file
from megatron_bliss.errors import InputError, MissingFileError
from megatron_bliss.utils.io import atomic_path, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

UNIVERSAL_SUFFIX = "_universal"


class ResumePoint(NamedTuple):
    """Where a run continues from; ``elastic``: through a universal conversion."""

    checkpoint_dir: Path
    tag: str
    meta: dict[str, Any]
    elastic: bool


def tag_for(step: int) -> str:
    return f"global_step{step}"


def resolve_checkpoint(path: str | Path, verify: bool = True) -> tuple[Path, str]:
    """``(checkpoints_dir, tag)`` for a run dir, a checkpoints dir or one step folder.

    A step folder named explicitly is verified and used as it is (its first problem is the
    error). A checkpoints dir gives its newest complete step folder, whether or not ``latest``
    exists or names it; the folders skipped are named in a warning. ``verify=False`` only locates
    (``latest``, else the newest step folder), for reading metadata beside the weights.
    """
    path = Path(path)
    if _is_step_folder(path):
        if verify:
            integrity.verify_folder(path, legacy_ok=True)
            if not (path / integrity.COMPLETION_RECORD).exists():
                logger.warning(
                    "%s: no completion record (older save): structure checked only", path
                )
        return path.parent, path.name
    for candidate in (path / "checkpoints", path):
        if has_step_folders(candidate) or (candidate / integrity.LATEST).exists():
            if verify:
                return candidate, integrity.newest_complete(candidate)
            latest = integrity.read_latest(candidate)
            if latest and (candidate / latest).is_dir():
                return candidate, latest
            folders = integrity.step_folders(candidate)
            if folders:
                return candidate, folders[-1][1]
    raise MissingFileError(f"{path}: not a DeepSpeed checkpoint (no 'latest' file or step folder)")


def _is_step_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    if TAG_PATTERN.match(path.name) or (path / integrity.COMPLETION_RECORD).exists():
        return True
    return any(path.glob("*model_states.pt"))


def read_meta(checkpoint_dir: Path, tag: str) -> dict[str, Any]:
    """``meta.json`` of a step folder; missing or corrupt is one line naming the file."""
    return integrity.read_meta(checkpoint_dir / tag)


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
    if rank == 0:
        integrity.invalidate(checkpoint_dir, tag)  # before DeepSpeed's barrier: ranks write after
    with atomic_path(folder / f"rng_rank{rank}.pt") as temporary:
        torch.save(rng_state(), temporary)
    if rank == 0:
        atomic_write_json(folder / integrity.META_FILE, meta)
        shutil.rmtree(checkpoint_dir / universal_tag(tag), ignore_errors=True)  # now stale
    engine.save_checkpoint(
        str(checkpoint_dir), tag=tag, client_state={"meta": meta}, save_latest=False
    )
    _barrier(dist)  # every rank's files are written: only now may they count as a checkpoint
    if rank == 0:
        integrity.write_completion_record(folder, step)
        atomic_write_text(checkpoint_dir / integrity.LATEST, tag)
        prune_checkpoints(checkpoint_dir, keep_last, protect=tag)
    _barrier(dist)
    logger.info("checkpoint saved: %s", folder)
    return folder


def _barrier(dist) -> None:
    if dist.is_initialized():
        dist.barrier()


def prune_checkpoints(checkpoint_dir: Path, keep_last: int, protect: str) -> None:
    """Keep the last ``keep_last`` step folders; a pruned tag's universal copy goes with it."""
    tags = integrity.step_folders(checkpoint_dir)
    for _, name in tags[:-keep_last]:
        if name != protect:
            shutil.rmtree(checkpoint_dir / name, ignore_errors=True)
    for entry in checkpoint_dir.glob(f"*{UNIVERSAL_SUFFIX}"):
        if entry.is_dir() and not (checkpoint_dir / entry.name[: -len(UNIVERSAL_SUFFIX)]).is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def needs_universal(
    meta: dict[str, Any], world_size: int, zero_stage: int, where: Path, elastic: bool
) -> bool:
    """Whether the checkpoint must go through a universal conversion to load in this run.

    Same ranks: no (DeepSpeed's own shards load as they are). Other ranks: yes when ``elastic``
    and the stage is the same ZeRO 1-3 stage. A stage change stops with one line: DeepSpeed
    0.19.8's ZeRO-2 and ZeRO-3 universal layouts differ (model-state file names, the optimizer
    state file), so neither loads the other's.
    """
    if not elastic:
        check_compatible(meta, world_size, zero_stage, where)
        return False
    check_same_stage(meta, zero_stage, where)
    saved_ranks = int(meta.get("world_size", world_size))
    if saved_ranks == world_size:
        return False
    if zero_stage < 1:
        raise ConfigError(
            f"{where}: checkpoint was written by {saved_ranks} ranks, this run has {world_size}; "
            "resuming on another number of ranks needs ZeRO stage 1-3 (universal checkpoint): "
            "resume with the same ranks, or export it (megatron-bliss export-hf) and use "
            "model.init_from"
        )
    return True


def check_compatible(meta: dict[str, Any], world_size: int, zero_stage: int, where: Path) -> None:
    """Stop with one line when the checkpoint's partitioning does not match this run (the rule
    without elastic resume, ``checkpoint.elastic_resume=false``)."""
    if int(meta.get("world_size", world_size)) != world_size:
        raise ConfigError(
            f"{where}: checkpoint was written by {meta['world_size']} ranks, this run has "
            f"{world_size}; resume with the same number of ranks (or set "
            "checkpoint.elastic_resume=true), or export it (megatron-bliss export-hf) and start a "
            "new run with model.init_from=EXPORTED_DIR"
        )
    check_same_stage(meta, zero_stage, where)


def check_same_stage(meta: dict[str, Any], zero_stage: int, where: Path) -> None:
    """ZeRO's shard layouts differ by stage, with or without elastic resume."""
    saved_stage = int(meta.get("zero_stage", zero_stage))
    if saved_stage != zero_stage:
        raise ConfigError(
            f"{where}: checkpoint was written with ZeRO stage {saved_stage}, this run uses stage "
            f"{zero_stage}; resume with the same stage (elastic resume changes only the number "
            "of ranks) or export it (megatron-bliss export-hf) and use model.init_from"
        )


def universal_tag(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


def convert_to_universal(
    checkpoint_dir: Path, tag: str, context: DistributedContext, trust: bool = False
) -> str:
    """``tag`` converted to DeepSpeed's universal layout once; returns the universal tag.

    Rank 0 converts into a temporary folder and renames it when complete (a finished conversion
    is reused); the other ranks wait on the folder, not in a collective, since converting a large
    model can outlast the process group's timeout. A failure on rank 0 is written beside the
    folder, so every rank stops with the same line.
    """
    target = checkpoint_dir / universal_tag(tag)
    failed = checkpoint_dir / f".{target.name}.failed"
    with rank0_failure_note(failed, context):
        if not context.is_main:
            wait_for_rank0(target, failed, f"universal conversion of {checkpoint_dir / tag}")
        elif not target.is_dir():
            logger.info("converting %s to DeepSpeed's universal checkpoint", checkpoint_dir / tag)
            try:
                with checkpoint_reading(trust):
                    _run_ds_to_universal(checkpoint_dir / tag, target)
            except UntrustedCheckpoint:
                raise
            except FileNotFoundError as error:  # already one line naming the folder
                raise InputError(str(error)) from None
            except Exception as error:
                raise InputError(
                    f"{checkpoint_dir / tag}: universal checkpoint conversion failed: "
                    f"{type(error).__name__}: {error}"
                ) from None
    return target.name


def _run_ds_to_universal(source: Path, target: Path) -> None:
    """DeepSpeed's converter in-process; its prints go to the debug log, its output is renamed.

    The converter writes ``latest_universal`` next to its output folder, so it runs inside a
    private temporary parent that also keeps half-written files away from ``target``.
    """
    from deepspeed.checkpoint import ds_to_universal

    if not any(source.glob("*optim_states.pt")):
        raise MissingFileError(f"{source}: no optimizer states (*optim_states.pt) to convert")
    staging = target.parent / f".{target.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    output = staging / target.name
    arguments = argparse.Namespace(
        input_folder=str(source),
        output_folder=str(output),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            ds_to_universal.main(arguments)
        logger.debug("ds_to_universal output:\n%s", printed.getvalue())
        output.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def repair_universal_optimizer_state(engine, universal_dir: Path, trust: bool = False) -> None:
    """Undo two slips of DeepSpeed's ZeRO-3 universal loader (0.19.8) so training continues
    exactly: it copies group 0's options to every group (the no-decay group would get group 0's
    weight decay), and it gives every group the same ``step`` tensor object, which AdamW then
    increments once per group per step (wrong bias correction from the next step on).
    ZeRO-1/2 need neither; both repairs are no-ops there."""
    saved = load_file(universal_dir / "zero" / "optimizer_state.pt", trust, map_location="cpu")
    saved_groups = saved.get("param_groups", [])
    live_groups = engine.optimizer.param_groups
    if len(saved_groups) != len(live_groups):
        raise InputError(
            f"{universal_dir}: {len(saved_groups)} optimizer groups saved, this run has "
            f"{len(live_groups)}"
        )
    for live, stored in zip(live_groups, saved_groups, strict=True):
        live.update({key: value for key, value in stored.items() if key != "params"})
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in base.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


def reseed_for_elastic_resume(seed: int, step: int, rank: int) -> None:
    """Per-rank RNG files cannot map onto another number of ranks: derive fresh, reproducible
    streams from (seed, step, rank) instead (python, numpy, torch)."""
    derived = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def load_checkpoint(
    engine,
    checkpoint_dir: Path,
    tag: str,
    rank: int,
    universal: str | None = None,
    trust: bool = False,
) -> dict[str, Any]:
    """Restore model, optimizer, step and this rank's RNG; returns the checkpoint's meta.

    With ``universal`` (the converted tag of an elastic resume; the engine was built with
    ``load_universal``) weights and optimizer come from that folder, meta from ``tag``, and the
    RNG is not restored (the caller re-seeds, see ``reseed_for_elastic_resume``). ``trust``:
    DeepSpeed's full unpickler instead of weights-only loading (``safe_load``).
    """
    meta = read_meta(checkpoint_dir, tag)
    load_tag = universal or tag
    with checkpoint_reading(trust):
        load_path, _ = engine.load_checkpoint(
            str(checkpoint_dir),
            tag=load_tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
    if load_path is None:
        raise MissingFileError(
            f"{checkpoint_dir / load_tag}: DeepSpeed could not load the checkpoint"
        )
    if universal:
        repair_universal_optimizer_state(engine, checkpoint_dir / universal, trust)
        return meta
    rng_path = checkpoint_dir / tag / f"rng_rank{rank}.pt"
    if rng_path.exists():
        set_rng_state(torch.load(rng_path, weights_only=True))
    else:
        logger.warning("%s missing: RNG state not restored", rng_path)
    return meta
