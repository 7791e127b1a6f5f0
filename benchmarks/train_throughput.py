"""Training throughput of the engine (1 rank, ZeRO-2 and ZeRO-3) vs a plain PyTorch loop.

Same model (seeded preset), same data (one synthetic shard read through ``TrainingDataset``), same
AdamW groups, clipping and precision; tokens/s are medians over the timed steps (warm-up steps are
dropped), reported as ratios to the plain loop measured in the same run. The variants run in turn,
``--rounds`` times, and each round's ratio is taken against that round's plain loop, so slow drifts
of a shared machine cancel; ``ratio_median`` is the median over rounds. CPU targets: ZeRO-2 >= 0.9,
ZeRO-3 >= 0.85, at the shape of the reference measurement in the engine issue (pythia-14m shape,
512 tokens x micro-batch 4).

Where the engine's extra time goes (profiled at seq 256, 14.1M parameters, of which 12.9M are the
two 50304-row embedding matrices): DeepSpeed's per-optimizer-step work scales with parameters, not
tokens -- the fp64 gradient norm (~30 ms), flattening gradients into the fp32 partition (~15 ms),
gradient-bucket copies in the backward hooks (~20 ms) and, for ZeRO-3, the parameter
fetch/release hooks and a reduce-scatter. So the ratio rises with tokens per optimizer step (longer
sequences, more accumulation) and is lowest for tiny steps.

Variants: ``--stages`` gives ``zero2``/``zero3`` with ``--ds-config`` (default
``ds_configs/cpu_zero{stage}.json``) at that stage; each ``--variant "NAME=JSON [key=value ...]"``
adds one with that DeepSpeed JSON as written and pretrain overrides (e.g.
``deepspeed.zero3_leaf_blocks=true``). ``--compile`` and ``--liger`` set ``train.compile`` and
``model.liger_kernel`` for every engine variant and for the plain loop's model, so the ratio stays
the engine's overhead on the same model. ``ratio_to_zero2`` compares every variant with ``zero2``
round by round (the issue's ZeRO-3 targets). On CUDA each variant's peak memory is reported.
``--find-max-micro-batch`` times nothing: it searches, per engine variant, the largest micro-batch
(accumulation 1) that trains two steps without running out of device memory.

    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py                       # CPU, pythia-14m
    python benchmarks/train_throughput.py --preset pythia-410m --seq 1024 --micro-batch 8 \
        --precision bf16 --device cuda --steps 20                                   # GPU MFU
    python benchmarks/train_throughput.py --preset pythia-1b --seq 1024 --micro-batch 16 \
        --accumulation 4 --precision bf16 --device cuda --ds-config ds_configs/pythia_1b.json \
        --variant "zero3_tuned=ds_configs/gpu_zero3_tuned.json"                   # ZeRO-3 sweep
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-14m")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--stages", default="2,3", help="ZeRO stages to compare")
    parser.add_argument("--attn", default="auto")
    parser.add_argument(
        "--loss-kernel", default="auto", choices=["auto", "fused", "logits"],
        help="engine's train.loss_kernel (auto: fused on CUDA)",
    )  # fmt: skip
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=3, help="repeat plain/ZeRO-2/ZeRO-3 in turn (noise)"
    )
    parser.add_argument(
        "--log-interval", type=int, default=1,
        help="engine's logging.log_interval: only logged steps wait for the device",
    )  # fmt: skip
    parser.add_argument(
        "--ds-config", default=None,
        help="DeepSpeed JSON of the --stages variants (default: ds_configs/cpu_zero{stage}.json)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", default=[], metavar='"NAME=JSON [key=value ...]"',
        help="one more engine variant: that DeepSpeed JSON as written, plus pretrain overrides",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true", help="train.compile (engine and plain loop's model)"
    )
    parser.add_argument(
        "--liger", default="auto", choices=["auto", "on", "off"],
        help="model.liger_kernel (engine and plain loop's model; auto: llama on CUDA if installed)",
    )  # fmt: skip
    parser.add_argument(
        "--find-max-micro-batch", action="store_true",
        help="search each engine variant's largest micro-batch instead of timing",
    )  # fmt: skip
    parser.add_argument("--search-start", type=int, default=8, help="first micro-batch tried")
    parser.add_argument("--search-limit", type=int, default=256, help="largest micro-batch tried")
    parser.add_argument("--search-probes", type=int, default=7, help="most micro-batches tried")
    parser.add_argument("--output", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step includes start-up)")
    try:
        args.variants = variants(args)
    except ValueError as error:
        parser.error(str(error))
    return args


@dataclass(frozen=True)
class Variant:
    """One engine configuration: a DeepSpeed JSON, an optional stage override, pretrain overrides."""

    name: str
    ds_config: str
    stage: int | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)


PLAIN = Variant("plain", "ds_configs/cpu_zero2.json", 2)  # the plain loop reads model and data only


def parse_variant(spec: str) -> Variant:
    """``"NAME=JSON key=value ..."`` -> Variant (the JSON's own ZeRO stage)."""
    words = shlex.split(spec)
    if not words or "=" not in words[0] or any("=" not in word for word in words[1:]):
        raise ValueError(f"--variant {spec!r}: expected 'NAME=JSON [key=value ...]'")
    name, path = words[0].split("=", 1)
    if not name or not path or name == "plain":
        raise ValueError(f"--variant {spec!r}: needs a NAME (not 'plain') and a JSON path")
    return Variant(name, path, None, tuple(words[1:]))


def variants(args) -> list[Variant]:
    """The --stages variants, then the --variant ones, names unique."""
    stages = [int(s) for s in args.stages.split(",") if s]
    found = [
        Variant(f"zero{stage}", args.ds_config or f"ds_configs/cpu_zero{stage}.json", stage)
        for stage in stages
    ] + [parse_variant(spec) for spec in args.variant]
    names = [variant.name for variant in found]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique: {', '.join(names)}")
    return found


def write_shard(prefix: Path, vocab: int, tokens: int) -> str:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    dtype = np.uint16 if vocab < 65500 else np.int32
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=dtype)
    for _ in range(max(1, tokens // 2048)):
        builder.add_item(torch.from_numpy(rng.integers(0, vocab, 2048).astype(np.int64)))
        builder.end_document()
    builder.finalize(str(prefix) + ".idx")
    return str(prefix)


def engine_config(args, shard: str, run_dir: Path, variant: Variant, vocab: int):
    from megatron_bliss.engine.config import load_pretrain_config

    overrides = {
        "run_dir": str(run_dir),
        "data.prefix": shard,
        "data.seq_length": args.seq,
        "model.preset": args.preset,
        "model.vocab_size": vocab,
        "model.attn_implementation": args.attn,
        "model.gradient_checkpointing": args.gradient_checkpointing,
        "train.micro_batch_size": args.micro_batch,
        "train.global_batch_size": args.micro_batch * args.accumulation,
        "train.train_steps": args.steps + args.warmup,
        "train.precision": args.precision,
        "train.device": args.device,
        "train.loss_kernel": args.loss_kernel,
        "train.compile": args.compile,
        "model.liger_kernel": args.liger,
        "schedule.type": "constant",
        "schedule.warmup_steps": 0,
        "deepspeed.config": variant.ds_config,
        "checkpoint.save_at_end": False,
        "checkpoint.resume": False,
        "logging.progress_bar": False,
        "logging.tensorboard": False,
        "logging.log_interval": args.log_interval,
    }
    if variant.stage is not None:
        overrides["deepspeed.zero_stage"] = variant.stage
    items = [f"{k}={v}" for k, v in overrides.items()] + list(variant.overrides)
    return load_pretrain_config(None, items)


def zero_stage(config) -> int:
    from megatron_bliss.engine.config import read_ds_json

    stage = config.deepspeed.zero_stage
    if stage is None:
        stage = read_ds_json(config.deepspeed).get("zero_optimization", {}).get("stage", 0)
    return int(stage)


def run_engine(config, warmup: int) -> dict:
    """Step times from the host clock between step ends (steps that do not log do not wait for
    the device, so only the sum over steps up to a logged one is exact; the last step logs)."""
    from megatron_bliss.engine.hooks import Hooks
    from megatron_bliss.engine.trainer import pretrain

    ends, mfus = {}, []

    def record(step, metrics):
        ends[step] = time.perf_counter()
        if step > warmup and "mfu" in metrics:
            mfus.append(metrics["mfu"])

    pretrain(config, Hooks(on_step_end=record))
    times = [ends[step] - ends[step - 1] for step in sorted(ends) if step > warmup]
    total = ends[max(ends)] - ends[warmup]
    return {"step_times": times, "mean_step_s": total / len(times), "mfu": statistics.median(mfus)}


def run_plain(config, warmup: int) -> dict:
    """The same steps as the engine, with plain torch: forward, loss, backward, clip, AdamW."""
    import torch

    from megatron_bliss.data.training_dataset import DataSource, TrainingDataset
    from megatron_bliss.engine.batches import BatchOptions, make_batch, masked_lm_loss
    from megatron_bliss.engine.config import device_type
    from megatron_bliss.engine.trainer import parameter_groups
    from megatron_bliss.models.loading import build_training_model

    device = torch.device(device_type(config))
    train = config.train
    model = build_training_model(config.model, config.model.vocab_size, train.seed, None)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    restore_liger = same_kernels(model, config, device)
    model.to(device).train()
    groups = parameter_groups(model, config.optimizer.weight_decay)
    optimizer = torch.optim.AdamW(
        groups, lr=config.optimizer.lr, betas=(config.optimizer.beta1, config.optimizer.beta2),
        eps=config.optimizer.eps,
    )  # fmt: skip
    dataset = TrainingDataset(
        [DataSource(config.data.prefix)], config.data.seq_length,
        train.train_steps * train.global_batch_size, train.seed,
    )  # fmt: skip
    accumulation = train.global_batch_size // train.micro_batch_size
    bf16 = train.precision == "bf16"
    times, consumed = [], 0
    for step in range(train.train_steps):
        started = time.perf_counter()
        for _ in range(accumulation):
            samples = np.stack([dataset[consumed + k] for k in range(train.micro_batch_size)])
            consumed += train.micro_batch_size
            batch = make_batch(samples, BatchOptions(), device, torch.float32)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=batch["input_ids"], use_cache=False).logits
            loss = masked_lm_loss(logits, batch["labels"], batch["loss_mask"]) / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    if restore_liger is not None:
        restore_liger()
    return {"step_times": times}


def same_kernels(model, config, device):
    """The engine's model.liger_kernel and train.compile on the plain loop's model (same model,
    so the ratio is the engine's overhead); returns liger's restore function or None."""
    from megatron_bliss.models.compile import compile_blocks
    from megatron_bliss.models.liger import apply_liger, model_type, use_liger

    restore = None
    if use_liger(config.model.liger_kernel, model_type(config.model), device.type):
        restore = apply_liger(model)
    if config.train.compile:
        compile_blocks(model)
    return restore


def peak_memory_gb() -> dict:
    """Peak device memory since the last reset (CUDA only; empty on CPU)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2),
    }


def reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    text = str(error)
    return (
        isinstance(error, torch.OutOfMemoryError)
        or "out of memory" in text.lower()
        or ("CUBLAS_STATUS_ALLOC_FAILED" in text)
    )


def describe(error: BaseException) -> str:
    text = str(error).splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def software() -> dict:
    """Versions and device, for the README's GPU table."""
    import importlib.metadata

    import torch

    versions = {"python": sys.version.split()[0]}
    for package in ("torch", "deepspeed", "transformers", "flash-attn", "liger-kernel", "triton"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
        versions["gpu"] = torch.cuda.get_device_name()
        versions["gpu_count"] = torch.cuda.device_count()
    return versions


def find_max_micro_batch(args, shard: str, work: Path, variant: Variant, vocab: int) -> dict:
    """Largest micro-batch (accumulation 1) that trains two steps: doubling from
    ``--search-start`` until a step runs out of memory or ``--search-limit``, then bisection,
    at most ``--search-probes`` tries."""
    from megatron_bliss.engine.trainer import pretrain

    probes, fits, fails = [], 0, None

    def probe(micro_batch: int) -> bool:
        shape = {"micro_batch": micro_batch, "accumulation": 1, "steps": 1, "warmup": 1}
        trial = argparse.Namespace(**{**vars(args), **shape})
        run_dir = work / f"{variant.name}_mb{micro_batch}"
        config = engine_config(trial, shard, run_dir, variant, vocab)
        reset_memory()
        record = {"micro_batch": micro_batch}
        started = time.perf_counter()
        try:
            pretrain(config)
            record["fits"] = True
        except Exception as error:  # an OOM ends this probe; anything else, the search
            if not is_out_of_memory(error):
                raise
            record["fits"] = False
            record["error"] = describe(error)
        record["seconds"] = round(time.perf_counter() - started, 1)
        record.update(peak_memory_gb())
        probes.append(record)
        reset_memory()
        return record["fits"]

    micro_batch = args.search_start
    while len(probes) < args.search_probes and micro_batch <= args.search_limit:
        if not probe(micro_batch):
            fails = micro_batch
            break
        fits, micro_batch = micro_batch, micro_batch * 2
    while fails is not None and len(probes) < args.search_probes and fails - fits > 1:
        middle = (fits + fails) // 2
        if probe(middle):
            fits = middle
        else:
            fails = middle
    return {"largest_fitting": fits or None, "smallest_failing": fails, "probes": probes}


@dataclass
class Measurements:
    times: dict = field(default_factory=dict)  # variant -> every timed step
    round_medians: dict = field(default_factory=dict)  # variant -> median step time per round
    round_ratios: dict = field(default_factory=dict)  # variant -> plain / variant, per round
    mfu: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)  # variant -> peak memory (CUDA)
    errors: dict = field(default_factory=dict)  # variant -> what stopped it
    searches: dict = field(default_factory=dict)  # variant -> find_max_micro_batch result

    def add(self, name: str, step_times: list[float], memory: dict) -> None:
        self.times.setdefault(name, []).extend(step_times)
        self.round_medians.setdefault(name, []).append(statistics.median(step_times))
        if memory:
            previous = self.memory.get(name, {})
            self.memory[name] = {k: max(v, previous.get(k, 0.0)) for k, v in memory.items()}


def report(args, tokens_per_step: int, found: Measurements, stages: dict) -> dict:
    times = found.times
    results = {
        name: {
            "median_step_s": statistics.median(values),
            "min_step_s": min(values),
            "tokens_per_second_median": tokens_per_step / statistics.median(values),
            "tokens_per_second_best": tokens_per_step / min(values),
            **({"mfu": found.mfu[name]} if name in found.mfu else {}),
            **found.memory.get(name, {}),
        }
        for name, values in times.items()
    }
    plain = results.get("plain")
    engine_names = [name for name in results if name != "plain"]
    ratio_to_zero2 = {}
    if "zero2" in found.round_medians:
        zero2 = found.round_medians["zero2"]
        for name in engine_names:
            rounds = [a / b for a, b in zip(zero2, found.round_medians[name])]
            ratio_to_zero2[name] = statistics.median(rounds)
    return {
        "preset": args.preset, "seq": args.seq, "micro_batch": args.micro_batch,
        "accumulation": args.accumulation, "precision": args.precision,
        "device": args.device, "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "compile": args.compile, "liger": args.liger,
        "variants": {v.name: {"ds_config": v.ds_config, "zero_stage": stages.get(v.name),
                              "overrides": list(v.overrides)} for v in args.variants},
        "software": software(),
        "timed_steps_per_variant": len(times.get("plain", [])), "results": results,
        "ratio_per_round": found.round_ratios,
        "ratio_median": {name: statistics.median(values)
                         for name, values in found.round_ratios.items()},
        "ratio_pooled": {name: results[name]["tokens_per_second_median"]
                         / plain["tokens_per_second_median"]
                         for name in engine_names} if plain else {},
        "ratio_best": {name: results[name]["tokens_per_second_best"]
                       / plain["tokens_per_second_best"]
                       for name in engine_names} if plain else {},
        "ratio_to_zero2": ratio_to_zero2,
        **({"errors": found.errors} if found.errors else {}),
        **({"max_micro_batch": found.searches} if found.searches else {}),
    }  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_bliss.models.presets import PRESETS
    from megatron_bliss.utils.io import atomic_write_json
    from megatron_bliss.utils.logging import setup_logging

    setup_logging()
    vocab = PRESETS[args.preset].vocab_size
    tokens_per_step = args.seq * args.micro_batch * args.accumulation
    found, stages = Measurements(), {}

    def save() -> dict:
        result = report(args, tokens_per_step, found, stages)
        if args.output:
            atomic_write_json(args.output, result)  # after every variant: a killed run keeps some
        return result

    with tempfile.TemporaryDirectory(prefix="throughput_") as work:
        work = Path(work)
        largest = args.search_limit if args.find_max_micro_batch else args.micro_batch
        steps = 2 if args.find_max_micro_batch else args.steps + args.warmup
        needed = args.seq * largest * args.accumulation * steps * 2 + args.seq * 4
        shard = write_shard(work / "synthetic_text_document", vocab, needed)
        for variant in args.variants:
            config = engine_config(args, shard, work / "stage", variant, vocab)
            stages[variant.name] = zero_stage(config)
        if args.find_max_micro_batch:
            for variant in args.variants:
                try:
                    found.searches[variant.name] = find_max_micro_batch(
                        args, shard, work, variant, vocab
                    )
                except Exception as error:  # recorded; the other variants still run
                    found.errors[variant.name] = describe(error)
                    reset_memory()
                save()
        else:
            measure(args, shard, work, vocab, found, save)
    result = save()
    print(json.dumps(result, indent=2))
    return 1 if found.errors else 0


def measure(args, shard: str, work: Path, vocab: int, found: Measurements, save) -> None:
    """``--rounds`` rounds of the plain loop then every engine variant; a variant that fails is
    recorded in ``errors`` and skipped in later rounds (the others still run)."""
    for round_number in range(args.rounds):
        plain = None
        if "plain" not in found.errors:
            config = engine_config(args, shard, work / f"plain{round_number}", PLAIN, vocab)
            reset_memory()
            try:
                plain = run_plain(config, args.warmup)["step_times"]
                found.add("plain", plain, peak_memory_gb())
            except Exception as error:  # the engine variants still run, without a ratio
                found.errors["plain"] = describe(error)
                reset_memory()
        for variant in args.variants:
            if variant.name in found.errors:
                continue
            run_dir = work / f"{variant.name}_{round_number}"
            config = engine_config(args, shard, run_dir, variant, vocab)
            reset_memory()
            try:
                result = run_engine(config, args.warmup)
            except Exception as error:  # recorded; the other variants still run
                found.errors[variant.name] = describe(error)
                reset_memory()
                continue
            found.add(variant.name, result["step_times"], peak_memory_gb())
            found.mfu[variant.name] = result["mfu"]
            if plain is not None:
                ratio = statistics.median(plain) / statistics.median(result["step_times"])
                found.round_ratios.setdefault(variant.name, []).append(ratio)
            save()


if __name__ == "__main__":
    sys.exit(main())
