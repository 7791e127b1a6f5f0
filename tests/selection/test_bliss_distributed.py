"""2 ranks (gloo, mp.spawn) give the same BLISS results as 1 rank on the same global batch, with
both ranks training (the group is the job) or rank 0 alone (``group_size: 1``, rank 1 only
scores), and count the FLOPs of 1 rank.

float64 so that the only difference, the order of floating-point sums, stays near 1e-12.
"""

from __future__ import annotations

import os
import pickle
import socket

import numpy as np
import pytest
import torch


def _settings():
    from megatron_bliss.selection.bliss import BlissSelector

    return BlissSelector.Config(
        proxy_preset="pythia-tiny", proxy_warmup_steps=2, proxy_warmup_batch_size=4,
        outer_steps=2, inner_steps=1, batch_size=4, target_batch_size=4, lr_proxy=1e-3,
        lr_score=1e-3, solver="cg", cg_iters=3, gamma=0.1, log_interval=1, dtype="float64",
        score_precision="float32",
    )  # fmt: skip


def run_bliss(
    shard: str, tokenizer_dir: str, target_jsonl: str, run_dir: str, group_size: int | None = None
) -> dict:
    from transformers import AutoTokenizer

    from megatron_bliss.data.pool import SequencePool
    from megatron_bliss.data.target_set import TargetSet
    from megatron_bliss.models.presets import build_model
    from megatron_bliss.selection.base import SelectionContext
    from megatron_bliss.selection.bliss import BlissSelector
    from megatron_bliss.selection.group import fit_on_group, make_group
    from megatron_bliss.selection.proxy import freeze

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    pool = SequencePool(shard, 16)
    torch.manual_seed(0)
    target = freeze(build_model("pythia-tiny", 512, 17, attn_implementation="sdpa"))
    context = SelectionContext(
        pool=pool, run_dir=__import__("pathlib").Path(run_dir), tokenizer=tokenizer,
        target_set=TargetSet.from_jsonl(target_jsonl, tokenizer, "documents", 24, limit=8),
        target_model=target, seed=0, model_preset="pythia-tiny",
    )  # fmt: skip
    selector = BlissSelector(_settings(), context)
    initial = {}
    prepare = selector.prepare_score_model

    def recording(warm_proxy):  # the score model as the bilevel loop receives it
        model = prepare(warm_proxy)
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    selector.prepare_score_model = recording
    group = make_group(group_size or 2)  # a world of 1 makes a group of 1
    fit_on_group(selector, group, context.run_dir)
    with group.active():
        scores = selector.score()
    state = {k: v.detach().clone() for k, v in selector.score_model.state_dict().items()}
    return {
        "state": state, "initial": initial, "history": selector.history, "scores": scores,
        "flops": dict(selector.flops),
    }  # fmt: skip


def _worker(rank: int, port: int, args: tuple, out_dir: str, group_size: int) -> None:
    os.environ.update(OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    run_dir = os.path.join(out_dir, "shared" if group_size == 1 else f"rank{rank}")
    result = run_bliss(*args, run_dir=run_dir, group_size=group_size)
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
        pickle.dump(result, handle)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory, tiny_shard, tokenizer_dir, corpus_jsonl) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: AdamW turns sum-order noise in ~0 gradients into
    try:  # lr-sized steps, so multi-threaded matmuls here would differ by more than 1e-9
        run_dir = tmp_path_factory.mktemp("single")
        return run_bliss(tiny_shard, str(tokenizer_dir), str(corpus_jsonl), run_dir=str(run_dir))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [2, 1])
def test_two_ranks_equal_one_rank(
    single_rank, tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl, group_size
):
    single = single_rank
    args = (tiny_shard, str(tokenizer_dir), str(corpus_jsonl))
    torch.multiprocessing.spawn(
        _worker, args=(_free_port(), args, str(tmp_path), group_size), nprocs=2, join=True
    )
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as handle:
            double = pickle.load(handle)
        for name, tensor in single["state"].items():
            torch.testing.assert_close(double["state"][name], tensor, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(double["scores"], single["scores"], rtol=1e-6)
        trained = rank < group_size
        assert len(double["history"]) == (len(single["history"]) if trained else 0)
        for one, two in zip(single["history"], double["history"]):
            for key in ("target_loss", "lower_loss", "score_std", "dots_mean", "residual"):
                assert two[key] == pytest.approx(one[key], rel=1e-8, abs=1e-12), key
        if trained:  # every member counts the group's selector training, as one rank does
            assert double["flops"] == pytest.approx(single["flops"], rel=1e-12)
    moved = max(
        (tensor - single["initial"][name].to(tensor.dtype)).abs().max().item()
        for name, tensor in single["state"].items()
    )
    assert moved > 1e-6  # the score model did train, so the equality is not trivial
