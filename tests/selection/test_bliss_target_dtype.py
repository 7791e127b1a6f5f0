"""BLISS's frozen target in bfloat16 (``target_dtype``) beside a float32 proxy and score model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from megatron_bliss.data.pool import SequencePool
from megatron_bliss.data.target_set import TargetSet
from megatron_bliss.models.presets import build_model
from megatron_bliss.selection.base import SelectionContext
from megatron_bliss.selection.bliss import BlissSelector
from megatron_bliss.selection.proxy import freeze

SETTINGS = BlissSelector.Config(
    proxy_init="target", outer_steps=2, batch_size=4, target_batch_size=4, upper_batch_size=4,
    lr_proxy=1e-3, lr_score=1e-3, gamma=0.1, log_interval=1, diagnostic_sequences=0,
    score_batch_size=16,
)  # fmt: skip


def _selector(shard, tokenizer_dir, corpus_texts, tmp_path, device="cpu", **changes):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    target_jsonl = tmp_path / "target.jsonl"
    target_jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[-4:]))
    torch.manual_seed(0)
    context = SelectionContext(
        pool=SequencePool(shard, 16), run_dir=tmp_path, tokenizer=tokenizer,
        target_set=TargetSet.from_jsonl(target_jsonl, tokenizer, "documents", 24, limit=4),
        target_model=freeze(build_model("pythia-tiny", 512, 17, attn_implementation="sdpa")),
        device=torch.device(device), seed=0,
    )  # fmt: skip
    return BlissSelector(dataclasses.replace(SETTINGS, **changes), context)


def test_bfloat16_target_trains_a_float32_proxy(tiny_shard, tokenizer_dir, corpus_texts, tmp_path):
    selector = _selector(tiny_shard, tokenizer_dir, corpus_texts, tmp_path, target_dtype="bfloat16")
    selector.fit()
    assert {p.dtype for p in selector.context.target_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in selector.proxy.parameters()} == {torch.float32}
    assert all(np.isfinite(r["lower_loss"]) for r in selector.history)
    assert np.isfinite(selector.score()).all()


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [("cpu", torch.float32, torch.float32), ("cuda", torch.float32, torch.bfloat16),
     ("cuda", torch.float64, torch.float64)],
)  # fmt: skip
def test_auto_target_dtype_is_bfloat16_on_cuda_only(
    tiny_shard, tokenizer_dir, corpus_texts, tmp_path, device, dtype, expected
):
    selector = _selector(tiny_shard, tokenizer_dir, corpus_texts, tmp_path, device=device)
    assert selector._target_dtype(dtype) == expected


def test_unknown_target_dtype_is_refused():
    with pytest.raises(ValueError, match="target_dtype 'half' is not one of"):
        dataclasses.replace(SETTINGS, target_dtype="half")
