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

    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py                       # CPU, pythia-14m
    python benchmarks/train_throughput.py --preset pythia-410m --seq 1024 --micro-batch 8 \
        --precision bf16 --device cuda --steps 20                                   # GPU MFU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
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
    parser.add_argument("--output", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step includes start-up)")
    return args


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


def engine_config(args, shard: str, run_dir: Path, stage: int, vocab: int):
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
        "schedule.type": "constant",
        "schedule.warmup_steps": 0,
        "deepspeed.config": f"ds_configs/cpu_zero{stage}.json",
        "deepspeed.zero_stage": stage,
        "checkpoint.save_at_end": False,
        "checkpoint.resume": False,
        "logging.progress_bar": False,
        "logging.tensorboard": False,
        "logging.log_interval": args.log_interval,
    }
    return load_pretrain_config(None, [f"{k}={v}" for k, v in overrides.items()])


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
    return {"step_times": times}


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_bliss.models.presets import PRESETS
    from megatron_bliss.utils.io import atomic_write_json
    from megatron_bliss.utils.logging import setup_logging

    setup_logging()
    vocab = PRESETS[args.preset].vocab_size
    tokens_per_step = args.seq * args.micro_batch * args.accumulation
    with tempfile.TemporaryDirectory(prefix="throughput_") as work:
        work = Path(work)
        needed = tokens_per_step * (args.steps + args.warmup) * 2 + args.seq * 4
        shard = write_shard(work / "synthetic_text_document", vocab, needed)
        stages = [int(s) for s in args.stages.split(",") if s]
        times: dict[str, list[float]] = {}
        round_ratios: dict[str, list[float]] = {}
        mfu: dict[str, float] = {}
        for round_number in range(args.rounds):
            config = engine_config(args, shard, work / f"plain{round_number}", 2, vocab)
            plain = run_plain(config, args.warmup)["step_times"]
            times.setdefault("plain", []).extend(plain)
            for stage in stages:
                name = f"zero{stage}"
                config = engine_config(args, shard, work / f"{name}_{round_number}", stage, vocab)
                result = run_engine(config, args.warmup)
                times.setdefault(name, []).extend(result["step_times"])
                ratio = statistics.median(plain) / statistics.median(result["step_times"])
                round_ratios.setdefault(name, []).append(ratio)
                mfu[name] = result["mfu"]
    results = {
        name: {
            "median_step_s": statistics.median(values),
            "min_step_s": min(values),
            "tokens_per_second_median": tokens_per_step / statistics.median(values),
            "tokens_per_second_best": tokens_per_step / min(values),
            **({"mfu": mfu[name]} if name in mfu else {}),
        }
        for name, values in times.items()
    }
    report = {
        "preset": args.preset, "seq": args.seq, "micro_batch": args.micro_batch,
        "accumulation": args.accumulation, "precision": args.precision,
        "device": args.device, "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "timed_steps_per_variant": len(times["plain"]), "results": results,
        "ratio_per_round": round_ratios,
        "ratio_median": {name: statistics.median(values) for name, values in round_ratios.items()},
        "ratio_pooled": {name: r["tokens_per_second_median"]
                         / results["plain"]["tokens_per_second_median"]
                         for name, r in results.items() if name != "plain"},
        "ratio_best": {name: r["tokens_per_second_best"]
                       / results["plain"]["tokens_per_second_best"]
                       for name, r in results.items() if name != "plain"},
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.output:
        atomic_write_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
