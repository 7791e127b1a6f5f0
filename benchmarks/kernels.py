"""Peak memory and time of the chunked loss kernels against naive full-logits losses.

Each variant runs forward + backward in its own subprocess so its memory is measured alone:
on CUDA the peak of ``torch.cuda.max_memory_allocated`` above the inputs, on CPU the growth of
the process's peak RSS (``resource.getrusage``) after the inputs were allocated. Results are
printed as ratios against the naive baseline measured in the same run.

    python benchmarks/kernels.py                                   # CPU, small grid
    python benchmarks/kernels.py --rows 4096 8192 --hidden 512 1024
    python benchmarks/kernels.py --device cuda --rows 4096 8192 16384 --hidden 512 1024 2048

Variants: ``naive_ce`` = ``F.cross_entropy((h @ W.T).float(), y)``; ``fused_ce`` =
:func:`megatron_bliss.kernels.linear_cross_entropy`; ``naive_kl`` = ``F.kl_div`` on full proxy
and target logits (target made from its hidden states under no_grad); ``fused_kl`` =
:func:`megatron_bliss.kernels.linear_token_kl_divergence` with target hidden + weight.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from megatron_bliss.kernels import linear_cross_entropy, linear_token_kl_divergence

LOG = logging.getLogger("benchmarks.kernels")
VARIANTS = ("naive_ce", "fused_ce", "naive_kl", "fused_kl")
BASELINE = {"fused_ce": "naive_ce", "fused_kl": "naive_kl"}


def _make_inputs(args, device):
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden_size, generator=gen).to(device, dtype)
    weight = (torch.randn(args.vocab, args.hidden_size, generator=gen) / args.hidden_size**0.5).to(
        device, dtype
    )
    labels = torch.randint(0, args.vocab, (args.rows,), generator=gen).to(device)
    inputs = {
        "hidden": hidden.requires_grad_(),
        "weight": weight.requires_grad_(),
        "labels": labels,
    }
    if args.variant.endswith("_kl"):
        inputs["target_hidden"] = torch.randn(args.rows, args.hidden_size, generator=gen).to(
            device, dtype
        )
        inputs["target_weight"] = weight.detach().clone()
    return inputs


def _run_variant(variant: str, inputs, chunk_size):
    hidden, weight = inputs["hidden"], inputs["weight"]
    if variant == "naive_ce":
        loss = F.cross_entropy((hidden @ weight.T).float(), inputs["labels"])
    elif variant == "fused_ce":
        loss = linear_cross_entropy(hidden, weight, inputs["labels"], chunk_size=chunk_size)
    elif variant == "naive_kl":
        with torch.no_grad():
            target = (inputs["target_hidden"] @ inputs["target_weight"].T).float()
        proxy = (hidden @ weight.T).float()
        loss = F.kl_div(F.log_softmax(proxy, -1), F.softmax(target, -1), reduction="batchmean")
    else:
        loss = linear_token_kl_divergence(
            hidden,
            weight,
            target_hidden=inputs["target_hidden"],
            target_weight=inputs["target_weight"],
            chunk_size=chunk_size,
        )
    loss.backward()
    hidden.grad = weight.grad = None
    return float(loss)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(args) -> dict:
    """One variant, one size: time per forward+backward and peak extra memory in MiB."""
    device = torch.device(args.device)
    inputs = _make_inputs(args, device)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = _run_variant(args.variant, inputs, args.chunk_size)  # warm-up, also sets the peak
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    start = time.perf_counter()
    for _ in range(args.repeats):
        _run_variant(args.variant, inputs, args.chunk_size)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.repeats
    return {"variant": args.variant, "peak_mib": peak / 2**20, "seconds": seconds, "loss": loss}


def _spawn(args, variant, rows, hidden_size) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--variant",
        variant,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--vocab",
        str(args.vocab),
        "--repeats",
        str(args.repeats),
        "--rows-one",
        str(rows),
        "--hidden-one",
        str(hidden_size),
    ]
    if args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print_row(rows, hidden_size, result, baseline):
    if "error" in result:
        print(f"{rows:>6} {hidden_size:>5} {result['variant']:>9}  failed: {result['error']}")
        return
    ratio = ""
    if baseline and "error" not in baseline:
        ratio = (
            f"  mem x{result['peak_mib'] / max(baseline['peak_mib'], 1e-9):.3f}"
            f"  time x{result['seconds'] / baseline['seconds']:.2f}"
        )
    print(
        f"{rows:>6} {hidden_size:>5} {result['variant']:>9} {result['peak_mib']:>10.1f} "
        f"{result['seconds'] * 1e3:>10.1f} {result['loss']:>8.4f}{ratio}",
        flush=True,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA)")
    parser.add_argument("--rows", type=int, nargs="+", default=[4096])
    parser.add_argument("--hidden", type=int, nargs="+", default=[512])
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--rows-one", dest="rows_one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hidden-one", dest="hidden_one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.worker:
        args.rows, args.hidden_size = args.rows_one, args.hidden_one
        print(json.dumps(worker(args)))
        return 0
    print(
        f"device={args.device} dtype={args.dtype} V={args.vocab} repeats={args.repeats} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(f"{'N':>6} {'H':>5} {'variant':>9} {'peak MiB':>10} {'ms/iter':>10} {'loss':>8}")
    for rows in args.rows:
        for hidden_size in args.hidden:
            results = {}
            for variant in args.variants:
                results[variant] = _spawn(args, variant, rows, hidden_size)
                _print_row(rows, hidden_size, results[variant], results.get(BASELINE.get(variant)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
