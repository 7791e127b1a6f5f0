"""``megatron-bliss score``: score every sequence of an indexed shard with a trained score model.

    megatron-bliss score --scorer RUN/score_model --data-prefix SHARD --out RUN/scores.npy
    torchrun --nproc_per_node 8 -m megatron_bliss.cli score --scorer ... --fraction 0.2

Fast path: a sequence's input tokens are one contiguous slice of the shard (sequence ``i`` reads
tokens ``[i*L, (i+1)*L)``), so a whole batch is a single reshape of the memory map; batches of
``--batch-size`` run under ``torch.inference_mode`` with bf16 autocast on GPUs and on CPUs with
native bf16 (``--precision``; ranking agrees with float32 to Spearman > 0.99 in
benchmarks/selection_cost.py). Data-parallel over
ranks (torchrun) or independent processes (``--rank/--world-size``): chunk ``k`` of
``--chunk-size`` sequences belongs to rank ``k % world``. Every finished chunk is saved atomically
under ``OUT.parts/``, so a killed run resumes where it stopped; the last step merges the chunks
into ``scores.npy`` (and, with ``--fraction``, ``selection.npy/.json`` beside it; for any other
``--out NAME.npy``, ``NAME.selection.npy/.json``, so runs sharing a folder keep their own).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.engine import distributed as distributed
from megatron_bliss.errors import ConfigError, InputError
from megatron_bliss.utils.device import resolve_device
from megatron_bliss.utils.dirs import check_dir_creatable, ensure_dir
from megatron_bliss.utils.io import atomic_save_npy, atomic_write_json

logger = logging.getLogger(__name__)


def sequence_inputs(pool: SequencePool, start: int, stop: int) -> torch.Tensor:
    """Input tokens of sequences ``[start, stop)`` as one (stop - start, L) int64 tensor."""
    length = pool.seq_length
    flat = np.asarray(pool.tokens[start * length : stop * length], dtype=np.int64)
    return torch.from_numpy(flat.reshape(stop - start, length))


PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX512-BF16 or AMX), where bf16 is ~1.7x faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs and on CPUs with native bf16, else float32 (the engine's names
    ``bf16``/``fp32`` are accepted too)."""
    precision = {"bf16": "bfloat16", "fp32": "float32"}.get(precision, precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" or cpu_has_bf16() else "float32"


def _autocast(device: torch.device, precision: str):
    enabled = resolve_precision(precision, device) == "bfloat16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def ranking_scores(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What ``scores.npy`` holds: a score model's logit (monotone in its sigmoid score), else the
    model's own output."""
    return model.logits(inputs) if hasattr(model, "logits") else model(inputs)


@contextmanager
def scoring_mode(model: torch.nn.Module, device: torch.device, precision: str):
    """Eval mode, no autograd and the scoring autocast, the model's mode restored after: every
    score this module makes runs under it, so scores from different inputs compare."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device, precision):
            yield
    finally:
        model.train(was_training)


def score_range(
    model: torch.nn.Module,
    pool: SequencePool,
    start: int,
    stop: int,
    batch_size: int,
    device,
    precision: str = "auto",
) -> np.ndarray:
    """float32 scores of sequences ``[start, stop)``, batched, without autograd."""
    device = torch.device(device)
    out = np.empty(stop - start, dtype=np.float32)
    with scoring_mode(model, device, precision):
        for begin in range(start, stop, batch_size):
            end = min(stop, begin + batch_size)
            inputs = sequence_inputs(pool, begin, end).to(device, non_blocking=True)
            out[begin - start : end - start] = ranking_scores(model, inputs).float().cpu().numpy()
    return out


def score_rows(
    model: torch.nn.Module, rows: list[np.ndarray], device, precision: str = "auto"
) -> np.ndarray:
    """float32 scores of token rows of any lengths, one forward each, as ``score_range`` scores
    the pool: scores of text from outside the shard, comparable to the pool's."""
    device = torch.device(device)
    out = np.empty(len(rows), dtype=np.float32)
    with scoring_mode(model, device, precision):
        for i, row in enumerate(rows):
            inputs = torch.as_tensor(np.asarray(row, dtype=np.int64))[None].to(device)
            out[i] = ranking_scores(model, inputs).float().item()
    return out


def score_pool(
    model: torch.nn.Module, pool: SequencePool, batch_size: int, device, precision: str = "auto"
) -> np.ndarray:
    """Scores of the whole pool; under torch.distributed each rank scores a slice, then all-reduce."""
    world, rank = distributed.world_size(), distributed.rank()
    bounds = np.linspace(0, len(pool), world + 1).astype(int)
    start, stop = int(bounds[rank]), int(bounds[rank + 1])
    scores = np.zeros(len(pool), dtype=np.float32)
    scores[start:stop] = score_range(model, pool, start, stop, batch_size, device, precision)
    if world > 1:
        tensor = torch.from_numpy(scores)
        torch.distributed.all_reduce(tensor)
        scores = tensor.numpy()
    return scores


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _check_or_write_meta(parts: Path, meta: dict, rank: int) -> None:
    meta_path = parts / "meta.json"
    if meta_path.exists():
        previous = json.loads(meta_path.read_text())
        if previous != meta:
            raise InputError(
                f"{parts}: left by a run with other settings ({previous}); delete it to start over"
            )
    elif rank == 0:
        atomic_write_json(meta_path, meta)


def check_positive(**values: int | None) -> None:
    """Sizes that must be at least 1 (None: use the default), checked before any file is made."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def check_ids_fit_scorer(pool: SequencePool, scorer: Path) -> None:
    """A shard tokenised for another vocabulary fails inside the embedding with an IndexError;
    say which shard and scorer instead."""
    try:
        vocab_size = int(json.loads((scorer / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # load_score_model reports a broken scorer
    largest = pool.max_token_id()
    if largest >= vocab_size:
        raise InputError(
            f"{pool.prefix}: holds token id {largest}, beyond the {vocab_size}-token vocabulary "
            f"of the scorer {scorer} (the shard was made with another tokenizer)"
        )


def score_shard(
    scorer: str | Path,
    data_prefix: str,
    out: str | Path,
    *,
    seq_length: int | None = None,
    batch_size: int = 64,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
    rank: int | None = None,
    world: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
    precision: str = "auto",
) -> np.ndarray | None:
    """Score a shard into ``out``; returns the scores on the merging rank, else None."""
    from tqdm.auto import tqdm

    from megatron_bliss.selection.score_model import load_score_model, read_meta

    check_positive(seq_length=seq_length, batch_size=batch_size, chunk_size=chunk_size)
    check_out_file(Path(out))
    check_dir_creatable(_parts_dir(Path(out)), "--out folder")
    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world is None else world
    device = resolve_device(device, "--device")
    scorer, out = Path(scorer), Path(out)
    meta = read_meta(scorer)
    seq_length = int(meta["seq_length"] if seq_length is None else seq_length)
    pool = SequencePool(data_prefix, seq_length).require_sequences()
    check_ids_fit_scorer(pool, scorer)
    model = load_score_model(scorer, device)
    parts = _parts_dir(out)
    ensure_dir(parts, "--out folder")
    run_meta = {
        "scorer": file_digest(scorer / "model.safetensors"),
        "data_prefix": str(data_prefix),
        "seq_length": seq_length,
        "num_sequences": len(pool),
        "chunk_size": chunk_size,
        "precision": resolve_precision(precision, device),
    }
    _check_or_write_meta(parts, run_meta, rank)
    chunks = range(0, max(1, -(-len(pool) // chunk_size)))
    mine = [k for k in chunks if k % world == rank and not (parts / f"chunk_{k:06d}.npy").exists()]
    done = len([k for k in chunks if k % world == rank]) - len(mine)
    if done:
        logger.info("resuming: %d of this rank's chunks already scored", done)
    progress = tqdm(total=sum(_chunk_len(k, chunk_size, len(pool)) for k in mine), unit="seq",
                    desc="scoring", disable=rank != 0 or None)  # fmt: skip
    start_time = time.perf_counter()
    for k in mine:
        begin, end = k * chunk_size, min(len(pool), (k + 1) * chunk_size)
        atomic_save_npy(
            parts / f"chunk_{k:06d}.npy",
            score_range(model, pool, begin, end, batch_size, device, precision),
        )
        progress.update(end - begin)
        if on_chunk is not None:
            on_chunk(k)
    progress.close()
    elapsed = time.perf_counter() - start_time
    scored = sum(_chunk_len(k, chunk_size, len(pool)) for k in mine)
    if scored:
        logger.info(
            "scored %d sequences in %.1fs (%.1f sequences/s)", scored, elapsed, scored / elapsed
        )
    if distributed.world_size() > 1:
        torch.distributed.barrier()
        if rank != 0:
            return None
    return _merge(parts, out, chunks)


def check_out_file(out: Path) -> None:
    """``--out`` names the scores file; a directory there would fail only after all the
    scoring, when the merged scores are written."""
    if out.is_dir():
        raise ConfigError(
            f"{out}: --out is a directory; name the scores file, e.g. {out}/scores.npy"
        )


def selection_name(out: Path) -> str:
    """``selection.npy`` beside ``scores.npy`` (docs/formats.md), ``NAME.selection.npy`` beside any
    other ``NAME.npy``: two runs scoring into one folder keep both selections."""
    return "selection.npy" if out.name == "scores.npy" else f"{out.stem}.selection.npy"


def _chunk_len(k: int, chunk_size: int, total: int) -> int:
    return max(0, min(total, (k + 1) * chunk_size) - k * chunk_size)


def _merge(parts: Path, out: Path, chunks: range) -> np.ndarray | None:
    """Concatenate the chunks once all exist (independent processes: the last one merges)."""
    paths = [parts / f"chunk_{k:06d}.npy" for k in chunks]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        logger.info("%d chunks still missing (other processes): not merging yet", len(missing))
        return None
    scores = np.concatenate([np.load(p) for p in paths]).astype(np.float32)
    atomic_save_npy(out, scores)
    shutil.rmtree(parts, ignore_errors=True)
    return scores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", required=True, help="score_model/ directory")
    parser.add_argument("--data-prefix", required=True, help="indexed shard (no extension)")
    parser.add_argument("--out", required=True, help="output scores.npy")
    parser.add_argument("--seq-length", type=int, default=None, help="default: the scorer's")
    parser.add_argument("--fraction", type=float, default=None, help="also write the selection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gumbel-temperature", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--chunk-size", type=int, default=4096, help="sequences per resumable chunk"
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu"
    )
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS,
        help="auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), else float32",
    )  # fmt: skip
    parser.add_argument("--rank", type=int, default=None, help="process index without torchrun")
    parser.add_argument("--world-size", type=int, default=None, help="processes without torchrun")


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.engine.distributed import join_launched_group
    from megatron_bliss.selection.rule import (
        check_keeps_some,
        check_selection_settings,
        write_selection,
    )
    from megatron_bliss.selection.score_model import read_meta

    check_out_file(Path(args.out))
    meta = None
    if args.fraction is not None:  # every check before the (long) scoring
        check_selection_settings(args.fraction, args.gumbel_temperature)
        meta = read_meta(args.scorer)
        seq_length = args.seq_length or int(meta["seq_length"])
        check_keeps_some(args.fraction, len(SequencePool(args.data_prefix, seq_length)))
    join_launched_group(resolve_device(args.device, "--device").type)
    scores = score_shard(
        args.scorer, args.data_prefix, args.out, seq_length=args.seq_length,
        batch_size=args.batch_size, chunk_size=args.chunk_size, device=args.device,
        rank=args.rank, world=args.world_size, precision=args.precision,
    )  # fmt: skip
    if scores is None:
        return 0
    if meta is not None:
        write_selection(
            Path(args.out).parent, scores, method=meta.get("method", "bliss"),
            fraction=args.fraction, data_prefix=args.data_prefix, seq_length=seq_length,
            seed=args.seed, gumbel_temperature=args.gumbel_temperature,
            scores_name=Path(args.out).name,  # never a second scores.npy beside --out
            selection_name=selection_name(Path(args.out)),
        )  # fmt: skip
    logger.info("wrote %s (%d scores)", args.out, len(scores))
    return 0
