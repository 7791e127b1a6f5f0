"""The Python half of ``launch_scripts/*.sh`` (each file is both a bash and a python script).

``bash launch_scripts/X.sh`` runs the bash half, which re-launches the same file with torchrun
(single node or ``NNODES``/``NODE_RANK``/``MASTER_ADDR``) or with ``deepspeed --hostfile`` when
``HOSTFILE`` is set. ``deepspeed launch_scripts/X.sh`` runs the file with python on every rank,
which lands here directly. Every rank then calls ``launch``: optional tiny-data preparation (rank 0
builds, the others wait for its ready file), training, and an export of the final checkpoint.

A script may hand ``launch`` a recipe runner (``pipeline.recipe.run_recipe``: the engine imports
no pipeline code): when the config's ``selection:`` section is enabled, or ``SELECT=METHOD`` is
set, every rank runs the multi-round selection recipe instead of one training stage.

Environment (all optional): RUN_DIR, DATA_PREFIX, TOKENIZER, EXPORT (1/0), EXTRA (overrides),
SELECT (a method, or ``none`` for plain pretraining).
Each rank exits 0 when finished, 2 on bad input and 75 when a signal stopped training after a
checkpoint (no export then; torchrun itself reports 1 for any rank that did not exit 0).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from megatron_bliss import exit_codes
from megatron_bliss.utils.launcher_env import launched_rank
from megatron_bliss.utils.paths import REPO_ROOT, shared_data_dir

logger = logging.getLogger(__name__)

C4_SAMPLE = "c4/c4-en-train.00000-of-01024.first1000.jsonl"
C4_VALID = "c4/c4-en-demo.300docs.jsonl"
HELDOUT_JSONL = "heldout.jsonl"
RecipeRunner = Callable[[str, list[str]], "int | None"]
"""(config path, overrides) -> exit code, or None when the config asks for plain pretraining."""


def _run_tool(arguments: list[str]) -> None:
    command = [sys.executable, "-m", "megatron_bliss.cli", *arguments]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1"}
    completed = subprocess.run(command, env=env)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(arguments[:1])} failed with exit code {completed.returncode}"
        )


def prepare_tiny_data(data_dir: Path, timeout_s: float = 900.0) -> tuple[str, str, str]:
    """(shard prefix, tokenizer dir, held-out prefix) for the tiny CPU run, built once on rank 0.

    Corpus: the C4 samples of ``../shared/data`` when present, else the built-in text (90/10
    train/held-out); tokenizer: a 2k byte-level BPE trained on it (keeps the embedding small).
    The held-out text is also kept as ``heldout.jsonl``, the tiny recipe's target set.
    """
    prefix, tokenizer = data_dir / "tiny_text_document", data_dir / "tokenizer"
    ready = data_dir / "READY"
    if launched_rank() == 0 and not ready.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        train_corpus, valid_corpus = _tiny_corpora(data_dir)
        _run_tool(["train-tokenizer", "--input", str(train_corpus), "--vocab-size", "2048",
                   "--output", str(tokenizer)])  # fmt: skip
        shutil.copyfile(valid_corpus, data_dir / HELDOUT_JSONL)
        for name, corpus in (("tiny", train_corpus), ("valid", valid_corpus)):
            _run_tool(["preprocess", "--input", str(corpus), "--output-prefix",
                       str(data_dir / name), "--tokenizer", str(tokenizer), "--workers", "1",
                       "--append-eod"])  # fmt: skip
        ready.write_text("ok\n")
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ready}: rank 0 did not finish preparing the data")
        time.sleep(1.0)
    return str(prefix), str(tokenizer), str(data_dir / "valid_text_document")


def _tiny_corpora(data_dir: Path) -> tuple[Path, Path]:
    """(training, held-out) jsonl: the C4 samples when present, else the built-in text split."""
    shared = shared_data_dir()
    if shared and (shared / C4_SAMPLE).exists() and (shared / C4_VALID).exists():
        logger.info("tiny data: C4 sample from %s", shared / "c4")
        return shared / C4_SAMPLE, shared / C4_VALID
    from megatron_bliss.data.builtin_corpus import write_builtin_jsonl

    corpus = write_builtin_jsonl(data_dir / "builtin.jsonl")
    lines = corpus.read_text().splitlines(keepends=True)
    held_out = max(1, len(lines) // 10)
    train, valid = data_dir / "builtin_train.jsonl", data_dir / "builtin_valid.jsonl"
    train.write_text("".join(lines[:-held_out]))
    valid.write_text("".join(lines[-held_out:]))
    logger.info("tiny data: built-in text (%d documents, %d held out)", len(lines), held_out)
    return train, valid


def launch(config_path: str, tiny_data: bool = False, recipe: RecipeRunner | None = None) -> int:
    """Train (and export) with ``config_path`` plus environment overrides, or run its selection
    recipe through ``recipe``; every rank calls it."""
    from megatron_bliss.utils.logging import setup_logging

    setup_logging()
    # the bash half's build cache, also for `deepspeed X.sh` (DeepSpeed's CPU ops build once)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    overrides = [
        arg for arg in sys.argv[1:] if not arg.startswith(("--local_rank", "--local-rank"))
    ]
    run_dir = os.environ.get("RUN_DIR")
    if run_dir:
        overrides.append(f"run_dir={run_dir}")
    if tiny_data and not os.environ.get("DATA_PREFIX"):
        base = Path(run_dir or "runs/pretrain_tiny_cpu")
        prefix, tokenizer, valid = prepare_tiny_data(base / "data")
        overrides += [f"data.prefix={prefix}", f"data.tokenizer={tokenizer}"]
        overrides += [f"data.valid_prefix={valid}"]
        heldout = base / "data" / HELDOUT_JSONL  # the tiny recipe's target set and ppl data
        overrides += [f"selection.target_data={heldout}", f"selection.eval.ppl_data={heldout}"]
    if os.environ.get("DATA_PREFIX"):
        overrides.append(f"data.prefix={os.environ['DATA_PREFIX']}")
    if os.environ.get("TOKENIZER"):
        overrides.append(f"data.tokenizer={os.environ['TOKENIZER']}")
    overrides += shlex.split(os.environ.get("EXTRA", ""))
    if recipe is not None:
        code = recipe(config_path, overrides)
        if code is not None:
            _leave(code)
    return _train_and_export(config_path, overrides)  # a path, or a shipped configs/ file


def _train_and_export(config_path: str, overrides: list[str]) -> int:

    from megatron_bliss.engine.cli import report
    from megatron_bliss.engine.config import load_pretrain_config
    from megatron_bliss.engine.trainer import pretrain
    from megatron_bliss.errors import UserError

    try:
        config = load_pretrain_config(config_path, overrides)
        summary = pretrain(config)
        if summary["interrupted"]:  # not finished: no export; the rerun continues
            if launched_rank() == 0:
                report(summary)
        elif (
            launched_rank() == 0 and os.environ.get("EXPORT", "1") == "1" and summary["checkpoint"]
        ):
            from megatron_bliss.engine.export import export_hf

            output = export_hf(summary["checkpoint"], Path(summary["run_dir"]) / "hf")
            print(f"trained to step {summary['final_step']}; exported {output}", flush=True)
    except UserError as error:
        print(f"pretrain: error: {error}", file=sys.stderr, flush=True)
        os._exit(exit_codes.BAD_INPUT)
    _leave(exit_codes.INTERRUPTED if summary["interrupted"] else exit_codes.FINISHED)


def _leave(code: int) -> None:
    """End this rank: wait for the others, then exit without the C++ teardown that occasionally
    aborts after a clean run under the deepspeed launcher (stack notes)."""
    import torch.distributed as dist

    from megatron_bliss.engine.distributed import exit_without_teardown

    if dist.is_initialized() and code != exit_codes.BAD_INPUT:
        dist.barrier()
        dist.destroy_process_group()
    exit_without_teardown(code)
