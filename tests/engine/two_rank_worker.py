"""Run by ``torchrun --nproc_per_node 2`` from test_two_ranks.py: several stages in one process.

argv: SHARD TOKENIZER_DIR OUT_DIR. Rank 0 writes OUT_DIR/results.json with the losses of
(a) an uninterrupted ZeRO-3 run with accumulation 2, (b) the same run killed after step 3 (with
its checkpoint) and resumed in-process, (c) the same run under ZeRO-2, and the logits of the
final engine forward and of the exported Hugging Face model on one batch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_overrides

from megatron_bliss.engine.config import load_pretrain_config
from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.engine.trainer import pretrain


def config(out: Path, name: str, **extra):
    overrides = tiny_overrides(sys.argv[1], sys.argv[2], out / name, **extra)
    return load_pretrain_config(None, overrides)


def main() -> None:
    out = Path(sys.argv[3])
    probe = torch.from_numpy(np.arange(64).reshape(2, 32) % 300)
    captured = {}

    def engine_logits(engine):
        engine.eval()
        with torch.no_grad():
            captured["engine"] = engine(input_ids=probe).logits.float().tolist()

    steps = {"train.train_steps": 8}
    full = pretrain(config(out, "full", **steps), Hooks(on_engine_final=engine_logits))
    killed = pretrain(
        config(out, "killed", **steps), Hooks(stop_after_step=3, stop_with_checkpoint=True)
    )
    assert killed["interrupted"] and killed["final_step"] == 3 and killed["checkpoint"]
    resumed = pretrain(config(out, "killed", **steps))
    zero2 = pretrain(config(out, "zero2", **steps, **{"deepspeed.zero_stage": 2}))
    if os.environ.get("RANK", "0") == "0":
        from megatron_bliss.engine.export import export_hf, load_model

        exported = export_hf(out / "full" / "checkpoints", out / "hf")
        model = load_model(exported)
        with torch.no_grad():
            hf_logits = model(input_ids=probe).logits.float().tolist()
        results = {
            "full": full["losses"],
            "resumed": resumed["losses"],
            "resumed_final_step": resumed["final_step"],
            "zero2": zero2["losses"],
            "world_size": full["world_size"],
            "engine_logits": captured["engine"],
            "hf_logits": hf_logits,
        }
        (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
