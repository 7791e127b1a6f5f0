"""What one tiny BLISS round costs next to the target training it selects for, and scoring speed.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/selection_cost.py [--round-steps 30]

1. BLISS (proxy warm-up + bilevel loop with ``configs/select_tiny_cpu.yaml``'s ``bliss:`` section)
   and scoring the whole pool, as a fraction of the round's target training time: a plain AdamW
   loop on the tiny target (``pythia-tiny-128``) over the round's token budget
   (``--round-steps`` x ``--round-batch`` x seq_length; configs/pipeline_tiny_cpu.yaml: 30 x 16).
2. Scoring throughput in sequences/s: ``score_range`` (batches of 64 read as one reshape of the
   memory map, ``torch.inference_mode``, bf16 autocast on bf16-capable CPUs; float32 also
   reported, with the Spearman correlation of the two rankings) against the plain loop research scripts use (the same score
   model on micro-batches of 4 gathered sequence by sequence, under ``torch.no_grad``). Target:
   >= 1.5x on CPU. Both timed after a warm-up pass, in the same process.

3. One BLISS outer step (the shipped default: inner step, grad f, its solver's direction, c_i
   (cosine: per-sample gradients; dot: finite differences), the score-model step) against one
   plain AdamW step of the proxy on the same batch (``--step-batch`` sequences: inner batch,
   draws and target batch all that size).
   Target: <= 6x (the physical floor is about 5 forward-backward equivalents).
4. The hypergradient of the score model on one batch with a fixed z: this project's form (c_i as
   the outer step computes it, one backward of ``-sum_i softmax(s)_i c_i``) against the authors'
   per-sample formulation (a loop over the micro-batch: backward of each s_i for its score-model
   gradient and of each CE_i for g_i, then ``-sum_i P_i (grad s_i - sum_j P_j grad s_j) c_i``
   with ``c_i = g_i . z``, divided by ``||g_i||`` under the cosine alignment); the two must agree
   (cosine similarity reported). Target: >= 5x faster.
Items 3-4 are medians of ``--repeats`` timings after a warm-up call, in the same process.

Pool: real C4 (``../shared/data/c4``; the built-in corpus when absent), 4k byte-level BPE.

On a GPU (``--device cuda``) the shapes come from flags: ``--proxy-preset`` (proxy and score
model backbone), ``--target-preset`` (the KL's target), ``--seq-length``, ``--micro-batch`` (the
outer step's batch), ``--upper-batch`` (its score-model draws; the paper pipeline's 128 over 8
GPUs is 16), ``--vocab-size`` (the models' vocabulary; the 4k BPE's ids stay valid), and
``--set KEY=VALUE`` for any other select-config key. ``--round-steps 0`` skips the round's
target training (its cost then comes from ``train_throughput.py``). Scoring is timed in bf16
against the micro-batch-4 ``no_grad`` loop in float32 and in bf16, and each phase's peak GPU
memory (``torch.cuda.max_memory_allocated``) is reported. The paper's shapes on one GPU:

    python benchmarks/selection_cost.py --device cuda --proxy-preset pythia-160m \
        --target-preset pythia-1b --seq-length 1024 --micro-batch 4 --vocab-size 50304 \
        --upper-batch 16 --round-steps 0 --outer-steps 3 --proxy-warmup-steps 2 --pool-repeat 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from planted_pool_auc import build_pool, load_texts

from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.models.presets import build_model, padded_vocab_size
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.bliss import BlissSelector
from megatron_bliss.selection.config import load_select_config
from megatron_bliss.selection.proxy import freeze, warmup_lm
from megatron_bliss.selection.scoring import ranking_scores, resolve_precision, score_range
from megatron_bliss.utils.io import atomic_write_json
from megatron_bliss.utils.logging import setup_logging
from megatron_bliss.utils.paths import REPO_ROOT

logger = logging.getLogger("selection_cost")


def plain_loop(model, pool, count: int, device=None, bf16: bool = False) -> np.ndarray:
    """The research scripts' scoring: micro-batches of 4 gathered sequence by sequence, under
    ``torch.no_grad`` (float32 unless ``bf16``); the same quantity ``score_range`` returns (a
    score model's logit)."""
    device = torch.device(device or "cpu")
    out = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, count, 4):
            batch = torch.from_numpy(pool.batch(range(start, min(count, start + 4))))
            scores = ranking_scores(model, batch[:, :-1].to(device))
            out.append(scores.float().cpu().numpy())
    return np.concatenate(out)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device, reset: bool = True) -> float | None:
    """GiB of peak GPU memory since the last reset (None on CPU); resets for the next phase."""
    if device.type != "cuda":
        return None
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return peak


def median_seconds(fn, repeats: int, device: torch.device | None = None) -> float:
    """Median wall time of ``fn`` after a warm-up call (waiting for the GPU when on one)."""
    device = torch.device(device or "cpu")
    fn()  # warm-up: the first call of a shape is slower
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def outer_step_cost(
    selector: BlissSelector, batch: int, repeats: int, upper: int | None = None
) -> dict:
    """Seconds of one outer step vs one plain proxy training step, both on ``batch`` sequences."""
    import copy

    from megatron_bliss.selection.proxy import pool_batch, sequence_losses

    config = selector.config
    upper = upper or batch
    selector.config = dataclasses.replace(
        config, batch_size=batch, upper_batch_size=upper, target_batch_size=batch
    )
    state = selector.loop_state()
    device = selector.context.device
    outer = median_seconds(lambda: selector.outer_step(state), repeats, device)
    selector.config = config
    proxy = copy.deepcopy(selector.proxy).train()
    optimizer = torch.optim.AdamW(proxy.parameters(), lr=1e-4)
    tokens = pool_batch(selector.context.pool, np.arange(batch), selector.context.device)

    def plain_step():  # the engine's loss: the LM head fused into the cross-entropy
        loss = sequence_losses(proxy, tokens).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(proxy.parameters(), 1.0)
        optimizer.step()

    plain = median_seconds(plain_step, repeats, device)
    return {"batch": batch, "upper_batch": upper, "outer_step_seconds": round(outer, 4),
            "plain_step_seconds": round(plain, 4), "outer_over_plain": round(outer / plain, 2)}  # fmt: skip


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def hypergradient_cost(selector: BlissSelector, batch: int, repeats: int) -> dict:
    """This project's hypergradient against the authors' per-sample loop, same z, same batch."""
    from megatron_bliss.selection.hypergrad import explicit_hypergradient, surrogate_loss
    from megatron_bliss.selection.proxy import lm_logits, pool_batch, sequence_ce

    proxy, score_model = selector.proxy, selector.score_model
    z = selector.direction.moments.current() if selector.direction.moments else None
    z = z or [torch.randn_like(p) for p in proxy.parameters()]
    tokens = pool_batch(selector.context.pool, np.arange(batch), selector.context.device)
    score_params = [p for p in score_model.parameters() if p.requires_grad]  # no frozen copy

    def batched():
        scores = score_model(tokens[:, :-1])
        dots = selector.alignment(tokens, z)  # what the outer step runs
        return _flat(torch.autograd.grad(surrogate_loss(scores, dots), score_params))

    def per_sample():
        grads, dots, scores = [], [], []
        for row in tokens:
            score = score_model(row[None, :-1])[0]
            grads.append(_flat(torch.autograd.grad(score, score_params)))
            ce = sequence_ce(lm_logits(proxy, row[None]), row[None])[0]
            g = torch.autograd.grad(ce, list(proxy.parameters()))
            dot = sum((gi * zi).sum() for gi, zi in zip(g, z))
            if selector.config.alignment == "cosine":
                dot = dot / torch.sqrt(sum((gi * gi).sum() for gi in g))
            dots.append(dot)
            scores.append(score.detach())
        weights = torch.softmax(torch.stack(scores), 0)
        return explicit_hypergradient(torch.stack(grads), weights, torch.stack(dots).detach())

    ours, theirs = batched(), per_sample()
    cosine = float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0))
    relative_error = float((ours - theirs).norm() / theirs.norm())
    device = selector.context.device
    fast = median_seconds(batched, repeats, device)
    slow = median_seconds(per_sample, repeats, device)
    return {"batch": batch, "batched_seconds": round(fast, 4), "per_sample_seconds": round(slow, 4),
            "speedup": round(slow / fast, 2), "cosine": round(cosine, 6),
            "relative_error": round(relative_error, 6)}  # fmt: skip


def timed(fn, *args, device: torch.device | None = None):
    start = time.perf_counter()
    result = fn(*args)
    if device is not None:
        synchronize(device)
    return result, time.perf_counter() - start


def select_overrides(args) -> list[str]:
    """The flags as select-config overrides (named flags first, then ``--set``)."""
    named = {
        "device": args.device,
        "seq_length": args.seq_length,
        "target_preset": args.target_preset,
        "bliss.proxy_preset": args.proxy_preset,
    }
    return [f"{key}={value}" for key, value in named.items() if value is not None] + args.set


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "select_tiny_cpu.yaml"))
    parser.add_argument("--round-steps", type=int, default=30)
    parser.add_argument("--round-batch", type=int, default=16)
    parser.add_argument("--throughput-sequences", type=int, default=2048)
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--outer-steps", type=int, default=None,
        help="run fewer outer steps than the config (the config's cost is then extrapolated "
        "from the measured seconds per step and per warm-up step)",
    )  # fmt: skip
    parser.add_argument("--proxy-warmup-steps", type=int, default=None)
    parser.add_argument(
        "--step-batch", "--micro-batch", dest="step_batch", type=int, default=16,
        help="sequences per outer step (inner batch, draws and target batch); paper: 4 per GPU",
    )  # fmt: skip
    parser.add_argument(
        "--upper-batch", type=int, default=None,
        help="pool sequences per outer step whose c_i train the score model (default: --step-batch)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--proxy-preset", default=None, help="bliss.proxy_preset (and score model)")
    parser.add_argument("--target-preset", default=None, help="target_preset (the KL's target)")
    parser.add_argument("--seq-length", type=int, default=None, help="seq_length of the pool")
    parser.add_argument(
        "--vocab-size", type=int, default=None,
        help="models' vocabulary (default: the 4k BPE's padded size; the paper's: 50304)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-repeat", type=int, default=1, help="repeat the corpus to make a larger pool"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any select-config override, e.g. bliss.score_batch_size=256",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    torch.manual_seed(0)
    select = load_select_config(args.config, select_overrides(args))
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("selection_cost.py: --device cuda but no CUDA device is visible")
        torch.cuda.reset_peak_memory_stats(device)
    memory = {}
    full = select.method_config("bliss")
    bliss_config = dataclasses.replace(
        full,
        outer_steps=args.outer_steps or full.outer_steps,
        proxy_warmup_steps=args.proxy_warmup_steps or full.proxy_warmup_steps,
    )
    pool_texts, target_texts, smoke = load_texts()
    from megatron_bliss.data.tokenizer_training import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(target_texts + pool_texts[:300], 4096)
    vocab = args.vocab_size or padded_vocab_size(len(tokenizer))
    workdir = Path(tempfile.mkdtemp(prefix="selection_cost_"))
    docs = [(text, 0) for text in pool_texts] * max(1, args.pool_repeat)
    pool, _, _ = build_pool(docs, tokenizer, workdir / "pool", select.seq_length)
    target_path = workdir / "target.jsonl"
    target_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in target_texts))
    target_set = TargetSet.from_jsonl(
        target_path, tokenizer, "documents", select.target_max_length, select.target_limit
    )
    # sdpa like the proxy (build_proxy): flash-attn 2, the GPU default, refuses float32 models
    target = build_model(select.target_preset, vocab, select.seq_length + 1, "sdpa").to(device)
    train_seconds = None
    if args.round_steps > 0:
        _, train_seconds = timed(
            lambda: warmup_lm(
                target, pool, steps=args.round_steps, batch_size=args.round_batch, lr=3e-3,
                seed=0, device=device, desc="round training",
            ), device=device,
        )  # fmt: skip
        memory["round_training"] = peak_memory(device)
    freeze(target)
    context = SelectionContext(
        pool=pool, run_dir=workdir / "run", target_set=target_set, target_model=target,
        tokenizer=tokenizer, device=device, seed=0,
    )  # fmt: skip
    selector = BlissSelector(bliss_config, context)
    peak_memory(device)
    _, fit_seconds = timed(selector.fit, device=device)
    memory["bliss_fit"] = peak_memory(device)
    _, score_seconds = timed(selector.score, device=device)
    memory["pool_scoring"] = peak_memory(device)

    model = selector.score_model.eval()
    count = min(args.throughput_sequences, len(pool))
    batch = bliss_config.score_batch_size
    score_range(model, pool, 0, min(count, 256), batch, device)  # warm-up passes
    plain_loop(model, pool, min(count, 64), device)
    synchronize(device)
    fast, fast_seconds = timed(score_range, model, pool, 0, count, batch, device, "auto")
    fp32, fp32_seconds = timed(score_range, model, pool, 0, count, batch, device, "float32")
    slow, slow_seconds = timed(plain_loop, model, pool, count, device, device=device)
    memory["scoring_throughput"] = peak_memory(device)
    if device.type == "cpu":
        np.testing.assert_allclose(fp32, slow, rtol=1e-4, atol=1e-5)
    from scipy.stats import spearmanr

    def per_round(seconds: float) -> float | None:
        return round(seconds / train_seconds, 3) if train_seconds else None

    results = {
        "smoke": smoke,
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "shapes": {
            "proxy_preset": bliss_config.proxy_preset, "target_preset": select.target_preset,
            "seq_length": select.seq_length, "vocab_size": vocab, "micro_batch": args.step_batch,
            "score_batch_size": batch,
        },
        "pool_sequences": len(pool),
        "round_training_seconds": round(train_seconds, 2) if train_seconds else None,
        "round_tokens": args.round_steps * args.round_batch * select.seq_length,
        "bliss_fit_seconds": round(fit_seconds, 2),
        "bliss_warmup_seconds": round(selector.seconds["warmup"], 2),
        "bliss_bilevel_seconds": round(selector.seconds["bilevel"], 2),
        "pool_scoring_seconds": round(score_seconds, 2),
        "selection_over_training": per_round(fit_seconds + score_seconds),
        "scoring_sequences_per_second": round(count / fast_seconds, 1),
        "plain_loop_sequences_per_second": round(count / slow_seconds, 1),
        "scoring_speedup": round(slow_seconds / fast_seconds, 2),
        "scoring_precision": resolve_precision("auto", device),
        "float32_batched_speedup": round(slow_seconds / fp32_seconds, 2),
        "spearman_auto_vs_float32": round(float(spearmanr(fast, fp32).statistic), 5),
        "bliss_flops": selector.flops,
        "outer_steps_run": bliss_config.outer_steps,
    }  # fmt: skip
    if device.type == "cuda":  # the authors' loop in bf16 too, and how far float32 drifts
        plain_loop(model, pool, min(count, 64), device, bf16=True)
        _, bf16_seconds = timed(plain_loop, model, pool, count, device, True, device=device)
        results["plain_loop_bf16_sequences_per_second"] = round(count / bf16_seconds, 1)
        results["scoring_speedup_vs_bf16_loop"] = round(bf16_seconds / fast_seconds, 2)
        results["float32_batched_vs_loop_max_abs_diff"] = float(np.abs(fp32 - slow).max())
        peak_memory(device)
    results["outer_step"] = outer_step_cost(
        selector, args.step_batch, args.repeats, args.upper_batch
    )
    memory["outer_step"] = peak_memory(device)
    results["hypergradient"] = hypergradient_cost(selector, args.step_batch, args.repeats)
    memory["hypergradient"] = peak_memory(device)
    if device.type == "cuda":
        results["peak_memory_gb"] = memory
    per_step = selector.seconds["bilevel"] / bliss_config.outer_steps
    per_warmup = selector.seconds["warmup"] / max(1, bliss_config.proxy_warmup_steps)
    config_seconds = (
        per_step * full.outer_steps + per_warmup * full.proxy_warmup_steps + score_seconds
    )
    results["config_outer_steps"] = full.outer_steps
    results["config_selection_over_training_extrapolated"] = per_round(config_seconds)
    print(json.dumps(results, indent=2))
    if args.output:
        atomic_write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
