"""Does the BLISS score model find planted useless text? AUC per kind, against three baselines.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/planted_pool_auc.py [--solvers identity cg paper]

Pool: real C4 documents (``../shared/data/c4``; the built-in corpus when absent, labelled a smoke
run) mixed with two kinds of planted useless text: shuffled-word copies of C4 documents and
repeated boilerplate. Each pool sequence is labelled by the kind of the majority of its tokens;
AUC is "useful ranked above useless" on pure sequences (>= 90% one kind). Target set: held-out
clean C4 validation documents. Target: a tiny Pythia warmed up on random pool sequences.

Compared at one budget on the 2-core CPU:
* BLISS score model after ``outer_steps`` (per solver, with wall-clock seconds: AUC per CPU-second),
* the warm proxy's own per-sequence loss (low loss = useful, the perplexity filter),
* an untrained score head on the warm proxy (several seeds),
* reducible loss: warm proxy loss minus the loss of a copy fine-tuned briefly on the target set.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.models.presets import build_model, padded_vocab_size
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.bliss import BlissSelector
from megatron_bliss.selection.proxy import freeze, lm_logits, pool_batch, sequence_ce, warmup_lm
from megatron_bliss.selection.score_model import ScoreModel
from megatron_bliss.utils.io import atomic_write_json
from megatron_bliss.utils.logging import setup_logging
from megatron_bliss.utils.paths import shared_data_dir

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


def pool_losses(model, pool, subset, device, batch_size=64) -> np.ndarray:
    losses = []
    with torch.inference_mode():
        for start in range(0, len(subset), batch_size):
            tokens = pool_batch(pool, subset[start : start + batch_size], device)
            losses.append(sequence_ce(lm_logits(model, tokens), tokens).numpy())
    return np.concatenate(losses)


def fine_tune_on_target(model, target_set: TargetSet, steps: int, lr: float, seed: int):
    from megatron_bliss.selection.proxy import target_loss_sum

    tuned = copy.deepcopy(model).train()
    for p in tuned.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        input_ids, labels = target_set.sample(16, rng)
        loss_sum, count = target_loss_sum(tuned, input_ids, labels)
        optimizer.zero_grad()
        (loss_sum / max(count, 1)).backward()
        optimizer.step()
    return tuned.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", nargs="+", default=["identity", "cg", "paper"])
    parser.add_argument("--outer-steps", type=int, default=200)
    parser.add_argument("--lr-score", type=float, default=3e-4)
    parser.add_argument("--cg-iters", type=int, default=3)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--warmup-steps", type=int, default=150)
    parser.add_argument("--warm-target", default=None, help="reuse a warmed-up target directory")
    parser.add_argument("--eval-sequences", type=int, default=3000, help="AUC on a random subset")
    parser.add_argument(
        "--separate-proxy", action="store_true",
        help="warm up a separate proxy (default: the warm tiny target doubles as the warm proxy, "
        "same preset and data, which halves the run time on a busy 2-core machine)",
    )  # fmt: skip
    parser.add_argument("--output", default=None, help="JSON results file")
    args = parser.parse_args(argv)
    setup_logging()
    torch.manual_seed(0)
    c4_pool, c4_target, smoke = load_texts()
    from megatron_bliss.data.tokenizer_training import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(c4_target + c4_pool[:300], args.vocab)
    vocab = padded_vocab_size(len(tokenizer))
    workdir = Path(tempfile.mkdtemp(prefix="planted_pool_"))
    docs = planted_documents(c4_pool, random.Random(0))
    pool, labels, purity = build_pool(docs, tokenizer, workdir / "pool", args.seq_length)
    logger.info("pool: %d sequences, kinds %s", len(pool), np.bincount(labels).tolist())
    target_path = workdir / "target.jsonl"
    target_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in c4_target))
    target_set = TargetSet.from_jsonl(target_path, tokenizer, "documents", 256)
    device = torch.device("cpu")
    target, warm_proxy_dir = warm_target(args, pool, vocab, workdir, device)
    subset = np.sort(np.random.default_rng(0).permutation(len(pool))[: args.eval_sequences])
    labels, purity = labels[subset], purity[subset]
    results: dict = {"smoke": smoke, "pool_sequences": len(pool), "eval_sequences": len(subset)}

    def report(key, value):
        results[key] = value
        logger.info("%s: %s", key, value)
        if args.output:
            atomic_write_json(args.output, results)

    if warm_proxy_dir is not None:
        report(**baselines(warm_proxy_dir, pool, subset, labels, purity, target_set, device))

    base = BlissSelector.Config(
        proxy_preset="pythia-tiny-128", proxy_warmup_steps=args.warmup_steps, proxy_warmup_lr=3e-3,
        proxy_warmup_batch_size=16, outer_steps=args.outer_steps, batch_size=16,
        target_batch_size=16, lr_proxy=1e-4, lr_score=args.lr_score, cg_iters=args.cg_iters,
        log_interval=40,
    )  # fmt: skip
    context = SelectionContext(
        pool=pool, run_dir=workdir / "run", target_set=target_set, target_model=target,
        tokenizer=tokenizer, device=device, seed=0,
    )  # fmt: skip
    for solver in args.solvers:
        torch.manual_seed(0)
        config = dataclasses.replace(base, solver=solver, proxy_init=warm_proxy_dir)
        selector = BlissSelector(config, context)
        selector.fit()
        scores = score_subset(selector.score_model, pool, subset, device)
        if warm_proxy_dir is None:
            warm_proxy_dir = str(workdir / "run" / "proxy_warmup")
            report(**baselines(warm_proxy_dir, pool, subset, labels, purity, target_set, device))
        auc_values = auc_per_kind(scores, labels, purity)
        seconds = selector.seconds["bilevel"]
        report(f"bliss_{solver}", {
            "outer_steps": args.outer_steps,
            "auc": auc_values,
            "bilevel_seconds": round(seconds, 1),
            "auc_gain_per_100s": {k: round(100 * (v - 0.5) / seconds, 4) for k, v in auc_values.items()},
            "score_std_final": round(selector.history[-1]["score_std"], 5),
        })  # fmt: skip
    print(json.dumps(results, indent=2))
    return 0


def warm_target(args, pool, vocab, workdir, device):
    """The frozen tiny target (warmed up here or reused) and, by default, its copy as proxy."""
    from transformers import AutoModelForCausalLM

    if args.warm_target:
        target = AutoModelForCausalLM.from_pretrained(args.warm_target)
        return freeze(target), None if args.separate_proxy else args.warm_target
    target = build_model("pythia-tiny-128", vocab, args.seq_length + 1)
    warmup_lm(target, pool, steps=args.warmup_steps, batch_size=16, lr=3e-3, seed=2, device=device)
    freeze(target)
    if args.separate_proxy:
        return target, None
    target.save_pretrained(workdir / "warm_target")
    return target, str(workdir / "warm_target")


def score_subset(model, pool, subset, device, batch_size=64) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(subset), batch_size):
            tokens = pool_batch(pool, subset[start : start + batch_size], device)
            out.append(model(tokens[:, :-1]).float().numpy())
    return np.concatenate(out)


def baselines(warm_dir, pool, subset, labels, purity, target_set, device) -> dict:
    """Proxy loss, untrained score heads (5 seeds: min and max AUC), reducible loss."""
    from transformers import AutoModelForCausalLM

    warm = freeze(AutoModelForCausalLM.from_pretrained(warm_dir))
    warm_loss = pool_losses(warm, pool, subset, device)
    untrained = [
        auc_per_kind(score_subset(ScoreModel.from_causal_lm(warm, 0.02, seed), pool, subset,
                                  device), labels, purity)
        for seed in range(5)
    ]  # fmt: skip
    tuned = fine_tune_on_target(warm, target_set, steps=30, lr=1e-3, seed=0)
    reducible = warm_loss - pool_losses(tuned, pool, subset, device)
    return {
        "key": "baselines",
        "value": {
            "proxy_loss": auc_per_kind(-warm_loss, labels, purity),
            "untrained_head_min_max": {
                kind: [min(u[kind] for u in untrained), max(u[kind] for u in untrained)]
                for kind in untrained[0]
            },
            "reducible_loss": auc_per_kind(reducible, labels, purity),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
