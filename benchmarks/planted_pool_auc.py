"""Does selection find planted useless text? AUC per kind for every method's shipped defaults.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/planted_pool_auc.py \
        [--config configs/select_tiny_cpu.yaml] [--methods bliss,reducible,dsir,perplexity,random]
        [--bliss-variants paper] [--bliss-settings steps200:bliss.outer_steps=200]

Pool: real C4 documents (``../shared/data/c4``; the built-in corpus when absent, labelled a smoke
run) mixed with two kinds of planted useless text: shuffled-word copies of C4 documents and
repeated boilerplate. Each pool sequence is labelled by the kind of the majority of its tokens;
AUC is "useful ranked above useless" on pure sequences (>= 90% one kind). Target set: held-out
clean C4 validation documents.

Every method runs through ``megatron-bliss select``'s code path (``run_selection``) with the
shipped config, so the figures are those of the defaults users get: one stand-in target (the
config's ``target_*`` warm-up on the pool) is made once and given to every method as
``--target-model``. Target (issue "Selection that pays"): BLISS's AUC >= 0.95 on every noise kind
within 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.selection.config import load_select_config
from megatron_bliss.selection.run import run_selection
from megatron_bliss.utils.io import atomic_write_json
from megatron_bliss.utils.logging import setup_logging
from megatron_bliss.utils.paths import resolve_shipped, shared_data_dir

logger = logging.getLogger("planted_pool_auc")
KINDS = {0: "c4", 1: "shuffled", 2: "boilerplate"}
BOILERPLATE = [
    "Click here to subscribe to our newsletter and get the latest deals delivered to your inbox.",
    "All rights reserved. Terms and conditions apply. Privacy policy. Cookie settings.",
    "Home | About us | Contact | Login | Register | Cart (0) | Checkout | FAQ | Sitemap",
    "Buy now and save 50% off! Free shipping on all orders over $50. Limited time offer.",
]


def read_jsonl(path: Path, limit: int | None = None) -> list[str]:
    with open(path) as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    return texts[:limit]


def load_texts() -> tuple[list[str], list[str], bool]:
    data = shared_data_dir()
    if data is None or not (data / "c4").is_dir():
        from megatron_bliss.data.builtin_corpus import builtin_documents

        docs = builtin_documents(1500)
        logger.warning("no ../shared/data/c4: smoke run on the built-in corpus")
        return docs[: len(docs) * 3 // 4], docs[len(docs) * 3 // 4 :], True
    pool = read_jsonl(data / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl")
    target = read_jsonl(data / "c4" / "c4-en-validation.2k.jsonl", 600)
    return pool, target, False


def planted_documents(c4: list[str], rng: random.Random) -> list[tuple[str, int]]:
    """Each C4 document, plus a shuffled-word copy of a third and boilerplate of similar size."""
    docs = [(text, 0) for text in c4]
    for text in rng.sample(c4, len(c4) // 2):
        words = text.split()
        rng.shuffle(words)
        docs.append((" ".join(words), 1))
    for text in rng.sample(c4, len(c4) // 2):
        lines = []
        while sum(len(line) for line in lines) < len(text):
            lines.append(rng.choice(BOILERPLATE))
        docs.append((" ".join(lines), 2))
    rng.shuffle(docs)
    return docs


def build_pool(docs, tokenizer, prefix: Path, seq_length: int):
    """Indexed shard of the documents and each sequence's majority kind and purity."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    kinds = []
    for text, kind in docs:
        ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
        builder.add_item(torch.tensor(ids, dtype=torch.int64))
        builder.end_document()
        kinds.extend([kind] * len(ids))
    builder.finalize(str(prefix) + ".idx")
    pool = SequencePool(prefix, seq_length)
    token_kinds = np.asarray(kinds[: len(pool) * seq_length]).reshape(len(pool), seq_length)
    counts = np.stack([(token_kinds == k).sum(1) for k in KINDS], 1)
    return pool, counts.argmax(1), counts.max(1) / seq_length


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_per_kind(scores, labels, purity) -> dict[str, float]:
    pure = purity >= 0.9
    out = {}
    for kind in (1, 2):
        mask = pure & ((labels == 0) | (labels == kind))
        out[KINDS[kind]] = round(auc(scores[mask], labels[mask] == 0), 4)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/select_tiny_cpu.yaml")
    parser.add_argument("--methods", default="bliss,reducible,dsir,perplexity,random")
    parser.add_argument("--bliss-variants", default="", help="e.g. paper: bliss.variant=...")
    parser.add_argument(
        "--bliss-settings", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="one more BLISS run with these select-config overrides, e.g. "
        "steps200:bliss.outer_steps=200 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--output", default=None, help="JSON results file")
    args = parser.parse_args(argv)
    setup_logging()
    start = time.perf_counter()
    config = load_select_config(resolve_shipped(args.config))  # recorded as given
    c4_pool, c4_target, smoke = load_texts()
    from megatron_bliss.data.tokenizer_training import train_bpe_tokenizer

    workdir = Path(tempfile.mkdtemp(prefix="planted_pool_"))
    tokenizer = train_bpe_tokenizer(c4_target + c4_pool[:300], args.vocab)
    tokenizer.save_pretrained(workdir / "tokenizer")
    docs = planted_documents(c4_pool, random.Random(0))
    pool, labels, purity = build_pool(docs, tokenizer, workdir / "pool", config.seq_length)
    logger.info("pool: %d sequences, kinds %s", len(pool), np.bincount(labels).tolist())
    target_path = workdir / "target.jsonl"
    target_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in c4_target))
    target_dir = stand_in(config, pool, tokenizer, workdir)
    results: dict = {"smoke": smoke, "config": args.config, "pool_sequences": len(pool)}
    runs = [(m, []) for m in args.methods.split(",") if m]
    runs += [(f"bliss_{v}", [f"bliss.variant={v}"]) for v in args.bliss_variants.split(",") if v]
    for entry in args.bliss_settings:
        name, _, settings = entry.partition(":")
        runs.append((f"bliss_{name}", settings.split(",")))
    for name, overrides in runs:
        method = "bliss" if name.startswith("bliss") else name
        run_dir = workdir / name
        run_selection(
            method, config, data_prefix=str(workdir / "pool"), run_dir=run_dir,
            target_data=target_path, tokenizer=str(workdir / "tokenizer"),
            target_model=str(target_dir), overrides=overrides,
        )  # fmt: skip
        scores = np.load(run_dir / "scores.npy")
        meta = json.loads((run_dir / "selection.json").read_text())
        results[name] = {"auc": auc_per_kind(scores, labels, purity), "seconds": meta["seconds"]}
        logger.info("%s: %s", name, results[name])
        if args.output:
            atomic_write_json(args.output, results)
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=2))
    if args.output:
        atomic_write_json(args.output, results)
    return 0


def stand_in(config, pool, tokenizer, workdir: Path) -> Path:
    """The config's stand-in target (``select`` without --target-model), made once."""
    from megatron_bliss.selection.stand_in import stand_in_target

    stand_in_target(config, pool, tokenizer, workdir / "target", torch.device("cpu"))
    return workdir / "target" / "target_warmup"


if __name__ == "__main__":
    sys.exit(main())
