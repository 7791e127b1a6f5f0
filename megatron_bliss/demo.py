"""``megatron-bliss demo`` (what ``make demo`` runs): the whole system on real text, in minutes.

1. Data: resolve a corpus and a tokenizer (``--corpus``; else the C4 sample in ../shared/data; else a
   slice of allenai/c4 from the hub; else Python's own documentation text, labelled a smoke run),
   preprocess it with 2 workers into a Megatron indexed dataset and check it reads back exactly.
2. Pipeline: hold out target-set and perplexity documents, then run the tiny CPU pipeline
   (``configs/pipeline_tiny_cpu.yaml``): a small BPE, 3 shards, a 2-rank ZeRO-3 warm-up of the
   target, 2 BLISS rounds (bilevel proxy + score model, shard scoring, top 20%), each followed by
   target training, export to Hugging Face format and lm-eval evaluation.
3. The same rounds with random selection from the same warm-up, at the same token budget.
4. ``report.md`` comparing both, with plots. Rerunning resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from megatron_bliss.utils.paths import REPO_ROOT

logger = logging.getLogger("megatron_bliss.demo")

PIPELINE_CONFIG = REPO_ROOT / "configs" / "pipeline_tiny_cpu.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo_out", help="demo folder (resumable)")
    parser.add_argument("--corpus", default=None, help="jsonl/parquet corpus file, glob or folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for the preprocessing step")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="pipeline overrides, e.g. round_steps=10 select.bliss.outer_steps=40",
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
    """Hold out every 10th document as the target set and every 10th (offset 5) for perplexity."""
    from megatron_bliss.data.tokenizer_training import corpus_texts

    paths = {name: output / f"{name}.jsonl" for name in ("pool", "target", "ppl")}
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
            name = "target" if index % 10 == 0 else "ppl" if index % 10 == 5 else "pool"
            handles[name].write(json.dumps({"text": text}) + "\n")
            index += 1
    for path in paths.values():
        path.with_suffix(".tmp").replace(path)
    logger.info("split %d documents into pool / target set / perplexity set", index)
    return paths


def run_pipelines(splits: dict[str, Path], output: Path, overrides: list[str]) -> list[Path]:
    """Steps 2 and 3: BLISS, then random selection from the same warm-up and data."""
    from megatron_bliss.pipeline.config import load_pipeline_config
    from megatron_bliss.pipeline.runner import run_pipeline

    common = [f"target_data={splits['target']}", f"eval.ppl_data={splits['ppl']}", *overrides]
    bliss = load_pipeline_config(
        PIPELINE_CONFIG,
        [
            f"run_dir={output / 'bliss'}",
            f"prepare.corpus=[{splits['pool']}]",
            f"prepare.valid_corpus=[{splits['ppl']}]",
            *common,
        ],
    )
    summary = run_pipeline(bliss)
    shards = [r["data_prefix"] for r in summary["rounds"]]
    valid = summary["valid_prefix"]
    random = load_pipeline_config(
        PIPELINE_CONFIG,
        [
            f"run_dir={output / 'random'}", "method=random", "prepare.corpus=[]",
            "prepare.valid_corpus=[]", f"shards=[{', '.join(shards)}]",
            f"tokenizer={summary['tokenizer']}", f"pretrain.data.valid_prefix={valid}",
            f"reuse_warmup={output / 'bliss' / 'round_0'}", *common,
        ],
    )  # fmt: skip
    run_pipeline(random)
    return [output / "bliss", output / "random"]


def run(args: argparse.Namespace) -> int:
    from megatron_bliss.data.sources import SMOKE_LABEL, resolve_corpus, resolve_tokenizer
    from megatron_bliss.eval.report import write_report

    output = Path(args.output).resolve()
    corpus, corpus_label = resolve_corpus(args.corpus, output / "inputs")
    tokenizer, tokenizer_label = resolve_tokenizer(args.tokenizer, corpus, output / "inputs")
    if corpus_label == SMOKE_LABEL:
        logger.warning("SMOKE RUN: no C4 available; using Python's documentation text")
    data = preprocess_showcase(corpus, tokenizer, output / "preprocessed")
    splits = split_corpus(corpus, output / "inputs")
    runs = run_pipelines(splits, output, list(args.overrides))
    write_report([str(r) for r in runs], output=str(output))
    print(demo_summary(output, corpus_label, tokenizer_label, data, runs))
    return 0


def demo_summary(output: Path, corpus_label, tokenizer_label, data: dict, runs: list[Path]) -> str:
    lines = [
        "",
        "megatron-bliss demo finished",
        f"  corpus:     {corpus_label}",
        f"  tokenizer:  {tokenizer_label}",
        f"  preprocess: {data.get('documents')} documents, {data.get('tokens')} tokens -> {data['shard']}",
    ]
    for run_dir in runs:
        summary = json.loads((run_dir / "pipeline.json").read_text())
        for entry in summary["rounds"]:
            round_dir = run_dir / entry["dir"]
            ppl = _eval_value(round_dir, "c4_ppl", "word_perplexity")
            kept = (
                np.load(round_dir / "selection.npy").size
                if (round_dir / "selection.npy").exists()
                else 0
            )
            lines.append(
                f"  {summary['method']:>6} round {entry['round']}: {entry['tokens']} target tokens, "
                f"{kept} sequences selected, held-out word perplexity {ppl}"
            )
    lines.append(f"  report:     {output / 'report.md'}")
    return "\n".join(lines)


def _eval_value(round_dir: Path, task: str, metric: str) -> str:
    path = round_dir / "eval.json"
    if not path.exists():
        return "n/a"
    value = json.loads(path.read_text()).get(task, {}).get(metric)
    return f"{value:.1f}" if isinstance(value, int | float) else "n/a"
