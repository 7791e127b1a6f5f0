"""The optional first stage: raw corpus -> tokenizer -> indexed dataset -> one shard per round.

Lets ``megatron-bliss pipeline --config configs/pipeline_tiny_cpu.yaml`` start from JSON lines.
At paper scale shards are made once beforehand with ``tools/preprocess_data.py --shards K`` and
named in ``shards:`` instead.

Besides the round shards it can make:

* a warm-up shard with extra documents (``warmup_corpus``: random web text that only the warm-up
  trains on, so every C4 document stays in the pool the rounds select from);
* a held-out validation shard (``valid_corpus``) for the target's periodic held-out loss;
* a split of the target set into the part selection sees (``target_select.jsonl``) and a
  disjoint held-out part (``target_heldout.jsonl`` plus an indexed shard for the periodic
  held-out target loss), so no reported target loss is measured on data a selector saw.

Held-out documents whose exact text is also in the pool are dropped (and counted in the log).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from megatron_bliss.errors import ConfigError, InputError
from megatron_bliss.pipeline.stages import StageMarker
from megatron_bliss.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

TARGET_SPLIT_SEED = 0  # the same split for every pipeline seed: seeds vary training, not data


@dataclass
class PrepareSection:
    corpus: list[str] = field(default_factory=list)
    """Raw corpus files, globs or folders (jsonl/json[.gz|.zst]/parquet); empty: use ``shards``."""
    warmup_corpus: list[str] = field(default_factory=list)
    """Extra documents added to the warm-up shard only (shard 0); the rounds never see them."""
    valid_corpus: list[str] = field(default_factory=list)
    """Held-out documents made into a validation shard for the target's periodic held-out loss."""
    tokenizer_vocab_size: int = 4096
    """Size of the byte-level BPE trained on the corpus when the pipeline names no tokenizer."""
    workers: int = 2


@dataclass
class PreparedData:
    """What the prepare stage made (paths), as the pipeline's stages consume it."""

    tokenizer: str
    shards: list[str]
    valid: str | None = None


@dataclass
class TargetSplit:
    """The target set split into what selection sees and what the reported loss uses."""

    select: str
    heldout: str
    heldout_prefix: str


def prepare_shards(
    section: PrepareSection, run_dir: Path, tokenizer: str | None, count: int
) -> PreparedData:
    """Tokenizer, ``count`` shards (shard 0 with the warm-up corpus) and the validation shard."""
    from megatron_bliss.data.shards import split_indexed
    from megatron_bliss.data.tokenizer_training import train_tokenizer

    data_dir = run_dir / "data"
    marker = StageMarker(
        data_dir,
        "prepare",
        {"section": _section_inputs(section), "tokenizer": tokenizer, "n": count},
    )
    if marker.done():
        return PreparedData(**marker.result())
    if tokenizer is None:
        tokenizer = str(data_dir / "tokenizer")
        train_tokenizer(
            section.corpus + section.warmup_corpus, section.tokenizer_vocab_size, tokenizer
        )
    prefix = _preprocess(section.corpus, data_dir / "corpus", tokenizer, section.workers)
    shards = split_indexed(prefix, count, str(data_dir / "corpus"))
    if section.warmup_corpus:
        shards[0] = _add_warmup_corpus(section, data_dir, tokenizer, shards[0])
    valid = None
    if section.valid_corpus:
        pool_texts = text_digests(section.corpus + section.warmup_corpus)
        kept = _write_new_documents(section.valid_corpus, pool_texts, data_dir / "valid.jsonl")
        valid = _preprocess([str(kept)], data_dir / "valid", tokenizer, section.workers)
    prepared = PreparedData(tokenizer=tokenizer, shards=shards, valid=valid)
    marker.complete(asdict(prepared))
    logger.info("prepared %d shards from %s", count, ", ".join(section.corpus))
    return prepared


def _section_inputs(section: PrepareSection) -> dict:
    """The section as hashed into the stage marker (new keys only when set, so the markers of
    earlier runs still match)."""
    values = asdict(section)
    if not values["warmup_corpus"]:
        del values["warmup_corpus"]
    return values


def _add_warmup_corpus(section: PrepareSection, data_dir: Path, tokenizer: str, shard: str):
    from megatron_bliss.data.merge import merge_datasets

    extra = _preprocess(section.warmup_corpus, data_dir / "warmup_extra", tokenizer, 1)
    return merge_datasets([shard, extra], str(data_dir / "warmup_shard0_text_document"))


def split_target_set(
    path: str | Path,
    heldout_fraction: float,
    data_dir: Path,
    tokenizer: str,
    pool_corpus: list[str] | None = None,
) -> TargetSplit:
    """Rows of ``path`` shuffled with a fixed seed: the first ``1 - heldout_fraction`` for
    selection, the rest held out (also preprocessed for the engine's held-out loss). Rows whose
    text is in ``pool_corpus`` are dropped first."""
    data_dir = Path(data_dir)
    inputs = {"path": str(path), "fraction": heldout_fraction, "pool": pool_corpus or []}
    marker = StageMarker(data_dir, "target_split", {**inputs, "tokenizer": tokenizer})
    if marker.done():
        return TargetSplit(**marker.result())
    if not 0 < heldout_fraction < 1:
        raise ConfigError(f"target_heldout_fraction must be in (0, 1), got {heldout_fraction}")
    rows = [line for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line]
    seen = text_digests(pool_corpus) if pool_corpus else set()
    fresh = [row for row in rows if _digest(_row_text(row, path)) not in seen]
    if len(fresh) < len(rows):
        logger.info("%s: %d row(s) also in the pool left out", path, len(rows) - len(fresh))
    order = np.random.default_rng(TARGET_SPLIT_SEED).permutation(len(fresh))
    held = round(heldout_fraction * len(fresh))
    if held < 1 or held >= len(fresh):
        raise InputError(
            f"{path}: {len(fresh)} row(s) cannot be split {heldout_fraction:g} held out"
        )
    select, heldout = data_dir / "target_select.jsonl", data_dir / "target_heldout.jsonl"
    atomic_write_text(select, "".join(fresh[i] + "\n" for i in sorted(order[held:])))
    atomic_write_text(heldout, "".join(fresh[i] + "\n" for i in sorted(order[:held])))
    texts = data_dir / "target_heldout_text.jsonl"
    atomic_write_text(texts, "".join(json.dumps({"text": _row_text(fresh[i], path)}) + "\n"
                                    for i in sorted(order[:held])))  # fmt: skip
    prefix = _preprocess([str(texts)], data_dir / "target_heldout", tokenizer, 1)
    split = TargetSplit(select=str(select), heldout=str(heldout), heldout_prefix=prefix)
    marker.complete(asdict(split))
    logger.info("target set %s: %d rows for selection, %d held out", path, len(fresh) - held, held)
    return split


def _row_text(row: str, path) -> str:
    """The text of one target-set row (``text``, or ``prompt`` + ``continuation``)."""
    record = json.loads(row)
    if not isinstance(record, dict):
        raise InputError(f"{path}: a row is not a JSON object")
    if isinstance(record.get("text"), str):
        return record["text"]
    return str(record.get("prompt", "")) + str(record.get("continuation", ""))


def _digest(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()


def text_digests(corpus: Iterable[str]) -> set[bytes]:
    """Digests of every document text of a corpus (exact-duplicate detection)."""
    from megatron_bliss.data.tokenizer_training import corpus_texts

    return {_digest(text) for text in corpus_texts(list(corpus))}


def _write_new_documents(inputs: list[str], seen: set[bytes], out: Path) -> Path:
    """The documents of ``inputs`` whose text is not in ``seen``, as JSON lines."""
    from megatron_bliss.data.tokenizer_training import corpus_texts

    kept = [text for text in corpus_texts(inputs) if _digest(text) not in seen]
    dropped = sum(1 for _ in corpus_texts(inputs)) - len(kept)
    if not kept:
        raise InputError(f"{', '.join(inputs)}: every document is also in the pool (none held out)")
    if dropped:
        logger.info("%s: %d document(s) also in the pool left out", ", ".join(inputs), dropped)
    atomic_write_text(out, "".join(json.dumps({"text": text}) + "\n" for text in kept))
    return out


def _preprocess(inputs: list[str], prefix: Path, tokenizer: str, workers: int) -> str:
    from megatron_bliss.data.preprocess import PreprocessOptions, output_name, run_preprocess
    from megatron_bliss.data.tokenizer import TokenizerSpec

    options = PreprocessOptions(
        inputs=list(inputs), output_prefix=str(prefix), tokenizer=TokenizerSpec(name=tokenizer),
        workers=workers, append_eod=True,
    )  # fmt: skip
    run_preprocess(options)
    return output_name(str(prefix), "text")
