"""``recipe_worker.py`` that SIGKILLs one of its own ranks at a planned point, once per plan.

``KILL_PLAN`` lists ``round:where:rank`` entries, comma-separated; ``where`` is ``select`` (after
the selector wrote its outputs, before the stage is recorded) or ``checkpoint:STEP`` (right after
the training stage saved that step). ``KILL_FLAGS`` is a folder where each entry leaves a flag
when it fires, so the rerun of the same command (same environment) goes through.
"""

import os
import signal
import sys
from pathlib import Path

from megatron_bliss.engine.distributed import rank
from megatron_bliss.engine.hooks import Hooks
from megatron_bliss.engine.launch import launch
from megatron_bliss.pipeline import runner
from megatron_bliss.pipeline.recipe import run_recipe

PLAN = [entry.split(":") for entry in os.environ["KILL_PLAN"].split(",")]
FLAGS = Path(os.environ["KILL_FLAGS"])


def die_if_planned(r: int, where: str) -> None:
    for number, (round_, *point, victim) in enumerate(PLAN):
        flag = FLAGS / f"killed_{number}"
        if (int(round_), ":".join(point), int(victim)) == (r, where, rank()) and not flag.exists():
            flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: a hard crash


def install() -> None:
    keep_selection = runner.Pipeline._keep_selection

    def killing_keep_selection(self, r):
        die_if_planned(r, "select")
        return keep_selection(self, r)

    def train_hooks(r, name):
        return Hooks(on_checkpoint=lambda folder: die_if_planned(r, f"checkpoint:{step(folder)}"))

    init = runner.Pipeline.__init__

    def init_with_hooks(self, config, hooks=None, world=None):
        init(self, config, runner.PipelineHooks(train_hooks=train_hooks), world)

    runner.Pipeline._keep_selection = killing_keep_selection
    runner.Pipeline.__init__ = init_with_hooks


def step(folder: str) -> int:
    return int(Path(folder).name.removeprefix("global_step"))


if __name__ == "__main__":
    install()
    config = sys.argv.pop(1)
    sys.exit(launch(config, recipe=run_recipe))
