"""``megatron-bliss demo`` (what ``make demo`` runs): the whole system on real text, in minutes.

1. Data: resolve a corpus and a tokenizer (``--corpus``; else the C4 sample in ../shared/data; else a
   slice of allenai/c4 from the hub; else Python's own documentation text, labelled a smoke run),
   preprocess it with 2 workers into a Megatron indexed dataset and check it reads back exactly.
2. Selection that has to pay, target-directed as the paper uses BLISS: the pool is the corpus,
   the target set is LAMBADA passages (half seen by selection, half held out for the reported
   loss). ``megatron-bliss compare`` with ``configs/compare_target_directed.yaml`` at demo size:
   one warm-up of a tiny target, then two rounds each of BLISS, random and DSIR selection from it
   at equal target-training tokens (bilevel proxy + score model, shard scoring, top 20%, target
   training, export to Hugging Face format, lm-eval on the last round).
3. ``report.md``: held-out target-set loss per method, the highest- and lowest-scored sequences,
   and one sentence of outcome computed from the numbers, which the demo also prints.

Without LAMBADA (no ../shared/data) the target set is a held-out tenth of the corpus instead (the
in-distribution setting, labelled). Rerunning resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

from megatron_bliss.utils.paths import REPO_ROOT

logger = logging.getLogger("megatron_bliss.demo")

COMPARE_CONFIG = REPO_ROOT / "configs" / "compare_target_directed.yaml"
# The benchmark's config at demo size (one seed, three methods, shorter rounds).
DEMO_SETTINGS = [
    "compare.seeds=1",
    "compare.methods=[bliss,random,dsir]",
    "warmup_steps=300",
    "round_steps=80",
    "select.bliss.outer_steps=60",
    "eval.limit=20",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo_out", help="demo folder (resumable)")
    parser.add_argument("--corpus", default=None, help="jsonl/parquet corpus file, glob or folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for the preprocessing step")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="compare/pipeline overrides, e.g. round_steps=40 select.bliss.outer_steps=40",
    )


def preprocess_showcase(corpus: list[Path], tokenizer: str, output: Path) -> dict:
    """Step 1: the corpus through ``tools/preprocess_data.py``'s code path, then read back."""
    from megatron_bliss.data.preprocess import PreprocessOptions, output_name, run_preprocess
    from megatron_bliss.data.tokenizer import TokenizerSpec, load_tokenizer

    prefix = str(output / "c4")
    options = PreprocessOptions(
        inputs=[str(p) for p in corpus], output_prefix=prefix,
        tokenizer=TokenizerSpec(name=tokenizer), workers=2, append_eod=True,
    )  # fmt: skip
    result = run_preprocess(options)
    shard = output_name(prefix, "text")
    check_first_document(shard, corpus[0], load_tokenizer(tokenizer))
    documents, tokens = (sum(column) for column in zip(*result["counts"].values()))
    return {"shard": shard, "documents": documents, "tokens": tokens}


def check_first_document(shard: str, corpus_file: Path, tokenizer) -> None:
    """megatron-core's reader must return exactly the tokenizer's ids (+ eod) for document 0."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_bliss.data.tokenizer_training import corpus_texts

    dataset = IndexedDataset(shard, mmap=True)
    first_text = next(t for t in corpus_texts([str(corpus_file)]) if t)
    expected = tokenizer.encode(first_text, add_special_tokens=False)
    stored = dataset[0][:-1].tolist()
    if stored != expected:
        raise RuntimeError(f"{shard}: document 0 does not read back as the tokenizer's ids")
    logger.info(
        "read back %s with megatron-core: %d documents, document 0 exact", shard, len(dataset)
    )


def split_corpus(corpus: list[Path], output: Path) -> dict[str, Path]:
    """Every 10th document held out as a target set (used only without LAMBADA) and every 10th
    (offset 5) as held-out C4; the rest is the pool."""
    from megatron_bliss.data.tokenizer_training import corpus_texts

    paths = {name: output / f"{name}.jsonl" for name in ("pool", "target", "heldout")}
    if all(p.exists() for p in paths.values()):
        return paths
    index = 0
    with contextlib.ExitStack() as stack:
        handles = {
            n: stack.enter_context(open(p.with_suffix(".tmp"), "w")) for n, p in paths.items()
        }
        for text in corpus_texts([str(f) for f in corpus]):
            if not text.strip():
                continue
            name = "target" if index % 10 == 0 else "heldout" if index % 10 == 5 else "pool"
            handles[name].write(json.dumps({"text": text}) + "\n")
            index += 1
    for path in paths.values():
        path.with_suffix(".tmp").replace(path)
    logger.info("split %d documents into pool / target set / held-out C4", index)
    return paths


def demo_config(splits: dict[str, Path], output: Path, overrides: list[str]):
    """The compare config: the shipped target-directed one at demo size, on the resolved data."""
    from megatron_bliss.data.sources import resolve_target_set, resolve_warmup_corpus
    from megatron_bliss.pipeline.config import load_pipeline_config

    lambada, label = resolve_target_set()
    if lambada is None:
        logger.warning("%s: the target set is a held-out tenth of the corpus instead", label)
    warmup = resolve_warmup_corpus()
    data = [
        f"run_dir={output / 'compare'}",
        f"prepare.corpus=[{splits['pool']}]",
        f"prepare.warmup_corpus=[{', '.join(str(p) for p in warmup)}]",
        f"prepare.valid_corpus=[{splits['heldout']}]",
        f"target_data={lambada or splits['target']}",
        f"eval.ppl_data={splits['heldout']}",
    ]
    return load_pipeline_config(COMPARE_CONFIG, [*data, *DEMO_SETTINGS, *overrides]), label


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.data.sources import SMOKE_LABEL, resolve_corpus, resolve_tokenizer
    from megatron_bliss.pipeline.compare import run_compare

    output = Path(args.output).resolve()
    corpus, corpus_label = resolve_corpus(args.corpus, output / "inputs")
    tokenizer, tokenizer_label = resolve_tokenizer(args.tokenizer, corpus, output / "inputs")
    if corpus_label == SMOKE_LABEL:
        logger.warning("SMOKE RUN: no C4 available; using Python's documentation text")
    data = preprocess_showcase(corpus, tokenizer, output / "preprocessed")
    splits = split_corpus(corpus, output / "inputs")
    config, target_label = demo_config(splits, output, list(args.overrides))
    result = run_compare(config)
    labels = {"corpus": corpus_label, "tokenizer": tokenizer_label, "target set": target_label}
    print(demo_summary(output / "compare", labels, data, result))
    return 0


def demo_summary(root: Path, labels: dict[str, str], data: dict, result: dict) -> str:
    from megatron_bliss.eval.compare_report import outcome

    lines = ["", "megatron-bliss demo finished"]
    lines += [f"  {name + ':':<12}{label}" for name, label in labels.items()]
    lines.append(f"  {'preprocess:':<12}{data.get('documents')} documents, {data.get('tokens')} "
                 f"tokens -> {data['shard']}")  # fmt: skip
    warmup = next(iter(result["warmup"].values()), {})
    lines.append(
        f"  {'warm-up:':<12}held-out target-set loss {_loss(warmup.get('target_loss'))} "
        f"(unigram model {_loss(result['unigram'].get('target'))})"
    )
    for method in result["methods"]:
        final = result["runs"][method]["0"]["rounds"][-1]
        lines.append(
            f"  {method + ':':<12}{final['tokens']:.0f} target tokens after the warm-up, held-out "
            f"target-set loss {_loss(final['target_loss'])}, held-out C4 loss {_loss(final['c4_loss'])}"
        )
    lines += [f"  {'outcome:':<12}{outcome(result)}", f"  {'report:':<12}{root / 'report.md'}"]
    return "\n".join(lines)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
