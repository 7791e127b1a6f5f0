"""The optional first stage: raw corpus -> tokenizer -> indexed dataset -> one shard per round.

Lets ``megatron-bliss pipeline --config configs/pipeline_tiny_cpu.yaml`` start from JSON lines.
At paper scale shards are made once beforehand with ``tools/preprocess_data.py --shards K`` and
named in ``shards:`` instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from megatron_bliss.pipeline.stages import StageMarker

logger = logging.getLogger(__name__)


@dataclass
class PrepareSection:
    corpus: list[str] = field(default_factory=list)
    """Raw corpus files, globs or folders (jsonl/json[.gz|.zst]/parquet); empty: use ``shards``."""
    valid_corpus: list[str] = field(default_factory=list)
    """Held-out documents made into a validation shard for the target's periodic held-out loss."""
    tokenizer_vocab_size: int = 4096
    """Size of the byte-level BPE trained on the corpus when the pipeline names no tokenizer."""
    workers: int = 2


def prepare_shards(section: PrepareSection, run_dir: Path, tokenizer: str | None, count: int):
    """(tokenizer path, shard prefixes, validation prefix or None) for ``count`` shards made
    from ``section.corpus``."""
    from megatron_bliss.data.shards import split_indexed
    from megatron_bliss.data.tokenizer_training import train_tokenizer

    data_dir = run_dir / "data"
    marker = StageMarker(
        data_dir, "prepare", {"section": vars(section), "tokenizer": tokenizer, "n": count}
    )
    if marker.done():
        result = marker.result()
        return result["tokenizer"], result["shards"], result["valid"]
    if tokenizer is None:
        tokenizer = str(data_dir / "tokenizer")
        train_tokenizer(section.corpus, section.tokenizer_vocab_size, tokenizer)
    prefix = _preprocess(section.corpus, data_dir / "corpus", tokenizer, section.workers)
    shards = split_indexed(prefix, count, str(data_dir / "corpus"))
    valid = None
    if section.valid_corpus:
        valid = _preprocess(section.valid_corpus, data_dir / "valid", tokenizer, section.workers)
    marker.complete({"tokenizer": tokenizer, "shards": shards, "valid": valid})
    logger.info("prepared %d shards from %s", count, ", ".join(section.corpus))
    return tokenizer, shards, valid


def _preprocess(inputs: list[str], prefix: Path, tokenizer: str, workers: int) -> str:
    from megatron_bliss.data.preprocess import PreprocessOptions, output_name, run_preprocess
    from megatron_bliss.data.tokenizer import TokenizerSpec

    options = PreprocessOptions(
        inputs=list(inputs), output_prefix=str(prefix), tokenizer=TokenizerSpec(name=tokenizer),
        workers=workers, append_eod=True,
    )  # fmt: skip
    run_preprocess(options)
    return output_name(str(prefix), "text")
