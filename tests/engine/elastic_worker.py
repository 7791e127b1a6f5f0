"""Run by ``torchrun --nproc_per_node 2`` from test_elastic_resume.py: the two-rank side.

argv: SHARD TOKENIZER_DIR OUT_DIR STAGE... For each ZeRO stage it runs (a) an uninterrupted
6-step run ``full_z{stage}``, (b) the same run stopped after step 4 with its checkpoint
(``two_z{stage}``, resumed later on one rank by the test), and (c) resumes ``one_z{stage}``, a
run the test stopped after step 4 on one rank, on these two ranks. Rank 0 writes
OUT_DIR/results.json: losses per run and the resumed run's final step and consumed samples.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_overrides

from megatron_bliss.engine.config import load_pretrain_config
from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.engine.trainer import pretrain

STEPS = 6
STOP_AFTER = 4


def elastic_config(shard: str, tokenizer_dir: str, run_dir: Path, stage: int, **extra):
    """The tiny run of these tests: 6 steps, 8 sequences per step, ZeRO ``stage``."""
    values = {"train.train_steps": STEPS, "deepspeed.zero_stage": stage, **extra}
    return load_pretrain_config(None, tiny_overrides(shard, tokenizer_dir, run_dir, **values))


def stop_after_checkpoint(config) -> None:
    """Train until step 4 and stop there with its checkpoint, like a preempted job."""
    summary = pretrain(config, Hooks(stop_after_step=STOP_AFTER, stop_with_checkpoint=True))
    assert summary["interrupted"] and summary["stopped_by"] == "hook", summary
    assert summary["final_step"] == STOP_AFTER and summary["checkpoint"] is not None


def main() -> None:
    shard, tokenizer_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    results = {}
    for stage in (int(value) for value in sys.argv[4:]):
        full = pretrain(elastic_config(shard, tokenizer_dir, out / f"full_z{stage}", stage))
        stop_after_checkpoint(elastic_config(shard, tokenizer_dir, out / f"two_z{stage}", stage))
        grown = pretrain(elastic_config(shard, tokenizer_dir, out / f"one_z{stage}", stage))
        results[stage] = {
            "full": full["losses"],
            "grown": grown["losses"],
            "grown_final_step": grown["final_step"],
            "grown_consumed_samples": grown["consumed_samples"],
            "world_size": full["world_size"],
        }
    if os.environ.get("RANK", "0") == "0":
        (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
