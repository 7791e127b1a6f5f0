"""``megatron-bliss compare``: several selection methods through the same multi-round pipeline.

    megatron-bliss compare --config configs/compare_target_directed.yaml
    megatron-bliss compare --config configs/compare_in_distribution.yaml --methods bliss,random --seeds 1

For every seed one warm-up is trained (``SEED_DIR/warmup``) and every method's pipeline starts
from it (``SEED_DIR/METHOD`` links ``round_0`` to it), so methods differ only in what they select;
every method trains the target for the same steps on its selections (equal target-training
tokens). The seed shifts the pipeline seed, which drives the warm-up subset and data order, the
target's initialisation, the selectors' initialisation and sampling, and each round's training
order. Data is prepared once under ``RUN_DIR/data`` and shared by all runs.

Writes ``RUN_DIR/compare.json`` (per method, seed and round: tokens, FLOPs split into target
training, selector training and scoring, held-out target-set loss, held-out C4 loss, the 9-task
average; plus mean and std over seeds and the tokens each method needs to reach the baseline's
final target-set loss) and the report (``eval/compare_report.py``). Rerunning resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from megatron_bliss.config import ConfigError
from megatron_bliss.pipeline.config import PipelineConfig
from megatron_bliss.pipeline.prepare import PrepareSection
from megatron_bliss.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

TARGET_KEY, POOL_KEY = "val_loss/target", "val_loss"  # the engine's held-out losses


def seed_dir(root: Path, k: int) -> Path:
    return root / f"seed_{k}"


def run_configs(config: PipelineConfig, root: Path, k: int) -> tuple[PipelineConfig, dict]:
    """(warm-up-only config, {method: config}) of seed index ``k``; data already prepared."""
    seed = config.seed + k * config.compare.seed_stride
    shared = dataclasses.replace(
        config, seed=seed, prepare=PrepareSection(), target_heldout_fraction=0.0
    )
    stale = any(resolve_method(config, m).get("snapshot_target") for m in config.compare.methods)
    warmup = dataclasses.replace(
        shared, run_dir=str(seed_dir(root, k) / "warmup"), num_rounds=0, snapshot_target=stale
    )  # with a snapshot when a method selects from snapshots (it changes nothing else)
    methods = {
        name: dataclasses.replace(
            shared,
            **resolve_method(config, name),
            run_dir=str(seed_dir(root, k) / name),
            reuse_warmup=str(Path(warmup.run_dir) / "round_0"),
        )
        for name in config.compare.methods
    }
    return warmup, methods


def resolve_method(config: PipelineConfig, name: str) -> dict[str, Any]:
    """``method`` and ``select`` of a method name or of a named variant of ``compare.variants``."""
    from megatron_bliss.config import merge

    variant = config.compare.variants.get(name)
    if variant is None:
        return {"method": name, "select": config.select}
    unknown = set(variant) - {"method", "select", "snapshot_target"}
    if unknown or "method" not in variant:
        raise ConfigError(
            f"compare.variants.{name}: expected 'method' and optional 'select' and "
            f"'snapshot_target', got {sorted(variant)}"
        )
    resolved = {
        "method": variant["method"],
        "select": merge(config.select, variant.get("select", {})),
    }
    if "snapshot_target" in variant:
        resolved["snapshot_target"] = bool(variant["snapshot_target"])
    return resolved


def run_compare(
    config: PipelineConfig,
    root: str | Path | None = None,
    where: str = "compare",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Prepare once, then per seed a warm-up and every method's rounds; compare.json + report."""
    from megatron_bliss.pipeline.preflight import preflight
    from megatron_bliss.pipeline.runner import prepare_data, run_pipeline

    check_methods(config)
    for name in config.compare.methods:  # every method's stages, before the first one runs
        preflight(dataclasses.replace(config, **resolve_method(config, name)), where, overrides)
    root = Path(root or config.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    target_set = {"path": config.target_data, "format": config.target_format,
                  "heldout_fraction": config.target_heldout_fraction}  # fmt: skip
    config = prepare_data(dataclasses.replace(config, run_dir=str(root)), root)
    seconds: dict[str, dict[int, float]] = {m: {} for m in config.compare.methods}
    for k in range(config.compare.seeds):
        warmup, methods = run_configs(config, root, k)
        logger.info("compare: seed %d (pipeline seed %d): warm-up", k, warmup.seed)
        run_pipeline(warmup)
        for method, method_config in methods.items():
            logger.info("compare: seed %d: %s", k, method)
            start = time.perf_counter()
            run_pipeline(method_config)
            seconds[method][k] = time.perf_counter() - start
    result = {**collect(config, root, seconds), "target_set": target_set}
    atomic_write_json(root / "compare.json", result)
    from megatron_bliss.eval.compare_report import write_compare_report

    report = write_compare_report(root)
    logger.info("compare finished: %s, %s", root / "compare.json", report)
    return result


def check_methods(config: PipelineConfig) -> None:
    from megatron_bliss.selection.registry import SELECTORS

    section = config.compare
    for name in section.methods:
        resolve_method(config, name)
    unknown = [m for m in section.methods if resolve_method(config, m)["method"] not in SELECTORS]
    if unknown:
        raise ConfigError(f"compare.methods: unknown {unknown} (known: {', '.join(SELECTORS)})")
    if len(set(section.methods)) != len(section.methods):
        raise ConfigError(f"compare.methods: {section.methods} names a method twice")
    if section.seeds < 1:
        raise ConfigError(f"compare.seeds must be >= 1, got {section.seeds}")
    if section.baseline not in section.methods:
        logger.warning("compare: baseline '%s' is not run: no tokens-to-reach figures",
                       section.baseline)  # fmt: skip


# ---------------------------------------------------------------------------- results
def collect(config: PipelineConfig, root: Path, seconds: dict | None = None) -> dict[str, Any]:
    """compare.json from the finished run directories under ``root``."""
    section = config.compare
    runs: dict[str, dict[str, Any]] = {}
    for method in section.methods:
        runs[method] = {}
        for k in range(section.seeds):
            record = run_record(seed_dir(root, k) / method)
            record["seconds"] = round((seconds or {}).get(method, {}).get(k, float("nan")), 1)
            runs[method][str(k)] = record
    warmups = {str(k): warmup_record(seed_dir(root, k) / "warmup") for k in range(section.seeds)}
    return {
        "methods": list(section.methods),
        "seeds": [config.seed + k * section.seed_stride for k in range(section.seeds)],
        "baseline": section.baseline,
        "target_set": {"path": config.target_data, "format": config.target_format},
        "unigram": unigram_losses(config),
        "warmup": warmups,
        "runs": runs,
        "summary": summarize(runs, section.baseline),
    }


def _held_out(records: list[dict]) -> list[dict]:
    return [r for r in records if TARGET_KEY in r or POOL_KEY in r]


def _last(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return float(values[-1]) if values else None


def warmup_record(run_dir: Path) -> dict[str, Any]:
    from megatron_bliss.eval.run_data import read_metrics

    records = _held_out(read_metrics(run_dir / "round_0" / "metrics.jsonl", []))
    tokens = _last(records, "consumed_tokens")
    return {"tokens": tokens, "target_loss": _last(records, TARGET_KEY),
            "c4_loss": _last(records, POOL_KEY)}  # fmt: skip


def run_record(run_dir: Path) -> dict[str, Any]:
    """Per round: tokens, FLOPs, held-out losses at the round's end, 9-task average; and the
    held-out curve over tokens trained after the warm-up."""
    from megatron_bliss.eval.run_data import load_run

    run = load_run(run_dir)
    warmup_tokens = float(run.rounds[0].tokens or 0.0) if run.rounds else 0.0
    rounds, curve = [], []
    for data in run.rounds[1:]:
        held = _held_out(data.metrics)
        rounds.append({
            "round": data.index,
            "tokens": float(data.tokens or 0.0) - warmup_tokens,
            "flops": data.flops,
            "target_loss": _last(held, TARGET_KEY),
            "c4_loss": _last(held, POOL_KEY),
            "task_average": task_average(data.eval),
        })  # fmt: skip
        curve += [
            [float(r["consumed_tokens"]) - warmup_tokens, r.get(TARGET_KEY), r.get(POOL_KEY)]
            for r in held
            if "consumed_tokens" in r
        ]
    return {"rounds": rounds, "curve": curve}


def task_average(evaluation: dict[str, dict]) -> dict[str, Any] | None:
    """Mean headline metric over the 9 headline tasks that were evaluated (and which)."""
    from megatron_bliss.eval.task_specs import HEADLINE_TASKS, headline_metric

    values = {t: evaluation[t][headline_metric(t)] for t in HEADLINE_TASKS
              if headline_metric(t) in evaluation.get(t, {})}  # fmt: skip
    if not values:
        return None
    return {"mean": float(np.mean(list(values.values()))), "tasks": sorted(values)}


def _stats(values: list[float | None]) -> dict[str, Any]:
    clean = [v for v in values if v is not None and np.isfinite(v)]
    return {
        "mean": float(np.mean(clean)) if clean else None,
        "std": float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0 if clean else None,
        "per_seed": values,
    }


def tokens_to_reach(curve: list[list], level: float) -> float | None:
    """First tokens at which the curve's target loss is <= ``level`` (linear between points)."""
    points = [(t, loss) for t, loss, _ in curve if loss is not None]
    previous = None
    for tokens, loss in points:
        if loss <= level:
            if previous is None or previous[1] == loss:
                return float(tokens)
            (t0, l0) = previous
            return float(t0 + (l0 - level) / (l0 - loss) * (tokens - t0))
        previous = (tokens, loss)
    return None


def summarize(runs: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """Mean/std over seeds of the final round, and tokens to reach the baseline's final loss."""
    summary: dict[str, Any] = {}
    for method, by_seed in runs.items():
        finals = [seed["rounds"][-1] if seed["rounds"] else {} for seed in by_seed.values()]
        entry = {
            "target_loss": _stats([f.get("target_loss") for f in finals]),
            "c4_loss": _stats([f.get("c4_loss") for f in finals]),
            "task_average": _stats([(f.get("task_average") or {}).get("mean") for f in finals]),
            "tokens": _stats([f.get("tokens") for f in finals]),
            "flops": {kind: _stats([_total_flops(seed, kind) for seed in by_seed.values()])
                      for kind in ("target_training", "selector_training", "scoring")},
        }  # fmt: skip
        if baseline in runs:
            entry["tokens_to_baseline"] = _stats(_reach_fractions(by_seed, runs[baseline]))
        summary[method] = entry
    return summary


def _total_flops(seed_record: dict, kind: str) -> float:
    return float(sum(r["flops"].get(kind, 0.0) for r in seed_record["rounds"]))


def _reach_fractions(by_seed: dict[str, Any], baseline: dict[str, Any]) -> list[float | None]:
    """Per seed: tokens to reach the baseline's final target loss, as a share of the baseline's
    tokens (None when never reached)."""
    fractions = []
    for k, seed in by_seed.items():
        base = baseline.get(k, {}).get("rounds") or []
        level = base[-1].get("target_loss") if base else None
        reached = tokens_to_reach(seed["curve"], level) if level is not None else None
        total = base[-1].get("tokens") if base else None
        fractions.append(reached / total if reached is not None and total else None)
    return fractions


def unigram_losses(config: PipelineConfig) -> dict[str, float | None]:
    """Cross-entropy of an add-one unigram model of the pool's tokens on each held-out shard:
    the loss a model that has learnt only token frequencies reaches."""
    from megatron_bliss.data.pool import SequencePool

    data = config.pretrain.get("data", {})
    held_out = {"c4": data.get("valid_prefix"), "target": data.get("valid_sets", {}).get("target")}
    counts = np.zeros(0, dtype=np.int64)
    for shard in config.shards:
        counts = _add_counts(counts, np.bincount(np.asarray(SequencePool(shard, 1).tokens)))
    if not counts.sum():
        return dict.fromkeys(held_out)
    result = {}
    for name, prefix in held_out.items():
        if not prefix:
            result[name] = None
            continue
        tokens = np.asarray(SequencePool(prefix, 1).tokens)
        smoothed = _add_counts(counts, np.zeros(int(tokens.max()) + 1, np.int64)) + 1.0
        result[name] = float(-np.log(smoothed / smoothed.sum())[tokens].mean())
    return result


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = max(len(a), len(b))
    return np.pad(a, (0, size - len(a))) + np.pad(b, (0, size - len(b)))
