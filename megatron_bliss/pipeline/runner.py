"""Runs the multi-round schedule of BLISS/MATES (method-spec 1.5) at any scale.

    round_0/   warm-up: the target trains on a random ``warmup_fraction`` of shard 0
    round_r/   select on shard r with the round r-1 target -> train on the kept sequences with
               lr * lr_round_factor ** r -> optional decay branch -> evaluate

Each stage runs in this process (tests inject kills through hooks) or, for training with
``launcher: torchrun``, as a ``torchrun`` job of ``nproc_per_node`` ranks, the way a cluster runs
each stage (the ranks end with this process, see ``utils.child_process``). Started itself under
torchrun, srun or the deepspeed launcher, the pipeline is one SPMD job (``world.py``): every rank
runs every stage, training in-process on the whole world, data-parallel selectors on all ranks,
the rest on rank 0 while the others wait; rank 0 decides what is finished and writes every shared
file. Trained in-process, the rounds share one DeepSpeed engine: the engine's round-boundary
hook (``Pipeline._next_round``) finishes a round (its marker, decay branch and evaluation),
selects the next round's data from the checkpoint it just wrote and hands that round back to the
engine, which rebuilds its data in place and trains on (``launcher.keep_engine: false`` builds a
new engine per round instead). With ``overlap`` the job is split: the training part runs this
class's rounds and the selection part its ``select_rounds``, round r+1's selection from round r's
snapshot while round r trains (``overlap.py``). Finished stages are skipped; a killed stage resumes from its own
checkpoints. A training
stage stopped by SIGTERM/SIGUSR1 saves a checkpoint and is not recorded as finished: the pipeline
stops with ``exit_codes.Interrupted`` and the next run resumes that stage.

The runner knows no method by name: each stage's config comes from ``stage_configs.py``, which
asks the selector class what it carries from round to round (BLISS: the warm-up proxy and the
previous score model; Influence Distillation with ``adam_state: auto``: the previous round's
AdamW state, which every training stage then exports). Directory layout: docs/formats.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from megatron_bliss.config import ConfigError, dump_yaml, merge
from megatron_bliss.engine.checkpoint import has_step_folders, tag_for
from megatron_bliss.engine.config import PretrainConfig
from megatron_bliss.engine.hooks import Hooks, NextRound, RoundEnd
from megatron_bliss.errors import MissingFileError
from megatron_bliss.exit_codes import Interrupted
from megatron_bliss.pipeline.config import PipelineConfig
from megatron_bliss.pipeline.overlap import (
    PartLink,
    SnapshotHooks,
    guarded,
    is_selection_part,
    selection_ranks,
    snapshot_step,
)
from megatron_bliss.pipeline.preflight import preflight
from megatron_bliss.pipeline.stage_configs import select_stage_config, train_stage_config
from megatron_bliss.pipeline.stages import StageMarker
from megatron_bliss.pipeline.world import PipelineWorld
from megatron_bliss.selection.base import EarlierRounds
from megatron_bliss.selection.rule import write_selection
from megatron_bliss.utils.child_process import run_child
from megatron_bliss.utils.io import atomic_write_json
from megatron_bliss.utils.paths import shared_data_dir

logger = logging.getLogger(__name__)

SELECTION_OUTPUTS = ("scores.npy", "selection.npy", "selection.json", "score_model")


@dataclasses.dataclass
class PipelineHooks:
    """What tests observe and control: ``before_stage(round, name)`` may raise to simulate a kill;
    ``train_hooks(round, name)`` returns engine ``Hooks`` for an in-process training stage."""

    before_stage: Callable[[int, str], None] | None = None
    train_hooks: Callable[[int, str], Any] | None = None


@dataclasses.dataclass
class TrainPlan:
    """One round's training stage: its config and marker, the checkpoints it starts from (the
    previous round's) and what the round's selection cost."""

    r: int
    config: PretrainConfig
    marker: StageMarker
    load: str | None
    selection_flops: dict[str, float]


class Pipeline:
    def __init__(
        self,
        config: PipelineConfig,
        hooks: PipelineHooks | None = None,
        world: PipelineWorld | None = None,
    ):
        self.config = config
        self.hooks = hooks or PipelineHooks()
        self.run_dir = Path(config.run_dir)
        self.world = world or PipelineWorld()
        self.world.use_run_dir(self.run_dir)
        self.launcher = config.launcher
        self.training: TrainPlan | None = None
        """The round the running engine trains (``_next_round`` finishes it)."""
        self.rounds: list[dict[str, Any]] = []
        """The finished rounds' records, in order (``pipeline.json``)."""
        self.link = PartLink(self.world, self.world.part) if self.world.part else None
        """With ``overlap``: the channel to the job's other part (``overlap.py``)."""
        self.offered: set[int] = set()
        """The rounds whose target this (training) part has posted for the selection part."""
        self.plans: dict[int, TrainPlan] = {}
        """The training stages planned so far, by round."""
        if (self.world.spmd or self.world.part) and self.launcher.type != "inprocess":
            logger.info(
                "pretrain.launcher.type=%s ignored: this job already runs on %d ranks, so "
                "training stages run in-process on all of them",
                self.launcher.type, self.world.world_size,
            )  # fmt: skip
            self.launcher = dataclasses.replace(self.launcher, type="inprocess")

    # ------------------------------------------------------------------ public
    def run(self) -> dict[str, Any]:
        with self.world.stage("start"):
            self.world.write(self._start)
            self.config = self.world.on_main(
                "prepare data", lambda: prepare_data(self.config, self.run_dir)
            )
        if self.link is not None:
            self.link.post("config", self.config)
        self.rounds = []
        while len(self.rounds) <= self.config.rounds():
            self._train(self._plan(len(self.rounds)))
        with self.world.stage("summary"):
            summary = self.world.write(lambda: self._write_summary(self.rounds))
        logger.info("pipeline finished: %s", self.run_dir)
        return summary

    def _start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(self.config, self.run_dir / "config.yaml")
        if self.config.reuse_warmup:
            self._link_warmup()

    # ------------------------------------------------------------------ rounds
    def _plan(self, r: int) -> TrainPlan:
        """Round r's selection (the warm-up's random one for r = 0), then its training stage."""
        c = self.config
        if r == 0:
            select = self._warmup_selection()
            return self._train_plan(0, select.hash, c.warmup_steps, 1.0, None, {})
        previous = self.rounds[-1]
        if self.link is not None:  # the selection part selects it (overlap.py)
            selected = self.link.wait(f"selected/{r}", f"round {r}'s selection (selection ranks)")
            upstream, result = selected["hash"], selected["result"]
        else:
            target = self._target_of(self.plans[r - 1]) if c.snapshot_target else None
            selects_with = previous  # training still continues from the round's last state
            if target is not None:  # selects as an overlapped run would, with the snapshot
                selects_with = {**previous, "checkpoints": target["checkpoints"]}
            select = self._round_selection(r, selects_with, target)
            upstream, result = select.hash, self._result(select)
        steps = c.warmup_steps + r * c.round_steps
        return self._train_plan(
            r, upstream, steps, c.lr_round_factor**r, previous["checkpoints"],
            result.get("flops", {}),
        )  # fmt: skip

    def select_rounds(self) -> None:
        """The selection part's run (``overlap``): round r's selection as soon as the training
        part has posted round r-1's target snapshot, then the selection for the training part."""
        for r in range(1, self.config.rounds() + 1):
            target = self.link.wait(f"target/{r - 1}", f"round {r - 1}'s target (training ranks)")
            previous = {"checkpoints": target["checkpoints"], "train_hash": target["train_hash"]}
            select = self._round_selection(r, previous, target)
            self.link.post(f"selected/{r}", {"hash": select.hash, "result": self._result(select)})
        logger.info("selection part: all %d rounds selected", self.config.rounds())

    def _warmup_selection(self) -> StageMarker:
        c = self.config
        round_dir = self._round_dir(0)
        inputs = {
            "shard": c.shards[0], "fraction": c.warmup_fraction, "steps": c.warmup_steps,
            "seed": c.seed, "seq_length": c.seq_length, "pretrain": c.pretrain,
            "tokenizer": c.tokenizer,
        }  # fmt: skip
        if c.selections_from:
            inputs["selections_from"] = c.selections_from
        select = StageMarker(round_dir, "select", inputs)
        with self.world.stage("round 0 select"):
            if not self._done(select):
                self._before(0, "select")
                if c.selections_from:
                    self.world.write(lambda: select.complete(self._copied_selection(0)))
                else:
                    self.world.write(lambda: self._random_warmup_selection(round_dir, select))
        return select

    def _random_warmup_selection(self, round_dir: Path, select: StageMarker) -> None:
        from megatron_bliss.data.pool import SequencePool

        c = self.config
        pool = SequencePool(c.shards[0], c.seq_length)
        scores = np.random.default_rng(c.seed).random(len(pool)).astype(np.float32)
        write_selection(
            round_dir, scores, method="random", fraction=c.warmup_fraction,
            data_prefix=c.shards[0], seq_length=c.seq_length, seed=c.seed,
        )  # fmt: skip
        select.complete({"flops": {}})

    def _round_selection(
        self, r: int, previous: dict[str, Any], target: dict[str, Any] | None = None
    ) -> StageMarker:
        """Round r's select stage with the round r-1 target (``target``: the snapshot the
        training part posted, with ``overlap``)."""
        c = self.config
        inputs = {
            "method": c.method, "select": c.select, "shard": c.shards[r], "fraction": c.fraction,
            "seed": c.seed + r, "target_data": c.target_data, "format": c.target_format,
            "target": previous["train_hash"],
        }  # fmt: skip
        if c.selections_from:
            inputs["selections_from"] = c.selections_from
        if target is not None:
            inputs["target_step"] = target["step"]
        select = StageMarker(self._round_dir(r), "select", inputs)
        with self.world.stage(f"round {r} select"):
            if not self._done(select):
                self._before(r, "select")
                result = self._select(r, previous)
                if target is not None:
                    self.world.write(lambda: self._record_target(r, target))
                self.world.write(lambda: select.complete(result))
        return select

    def _record_target(self, r: int, target: dict[str, Any]) -> None:
        """Which state of the round r-1 target selected round r (``selection.json``)."""
        path = self._round_dir(r) / "selection.json"
        meta = json.loads(path.read_text())
        checkpoints = Path(target["checkpoints"])
        meta["target"] = {
            "checkpoints": os.path.relpath(checkpoints, self.run_dir),
            "step": target["step"],
            "snapshot": target["snapshot"],
            "snapshot_fraction": self.config.snapshot_fraction,
        }
        atomic_write_json(path, meta)

    def _finish_round(self, plan: TrainPlan, train: dict[str, Any]) -> None:
        """Optional decay branch, then evaluation of this round's model; records the round."""
        c, r = self.config, plan.r
        evaluated, evaluated_hash = train["checkpoints"], train["hash"]
        if c.decay_steps > 0:
            decay = self._decay(r, train)
            evaluated, evaluated_hash = decay["checkpoints"], decay["hash"]
        self._evaluate(r, evaluated, evaluated_hash, train["step"])
        self.rounds.append(
            {
                "round": r,
                "dir": f"round_{r}",
                "data_prefix": c.shards[r],
                "checkpoints": train["checkpoints"],
                "train_hash": train["hash"],
                "tokens": train["consumed_tokens"],
                "flops": {
                    "target_training": train["flops"],
                    **_selection_flops(plan.selection_flops),
                },
            }
        )

    # ------------------------------------------------------------------ stages
    def _select(self, r: int, previous: dict[str, Any]) -> dict[str, Any]:
        """Run the selector on shard r with the round r-1 target; outputs land in round_r/.
        A data-parallel selector runs on every rank, any other on rank 0 alone."""
        from megatron_bliss.selection.registry import get_selector_class

        if self.config.selections_from:
            return self.world.write(lambda: self._copied_selection(r))
        if get_selector_class(self.config.method).data_parallel:
            self._run_selector(r, previous)
            return self.world.write(lambda: self._keep_selection(r))
        return self.world.on_main(f"round {r} select", lambda: self._select_here(r, previous))

    def _copied_selection(self, r: int) -> dict[str, Any]:
        from megatron_bliss.pipeline.selections_from import copy_selection

        logger.info("round %d: the selection of %s", r, self.config.selections_from)
        return copy_selection(self.config.selections_from, r, self._round_dir(r))

    def _select_here(self, r: int, previous: dict[str, Any]) -> dict[str, Any]:
        self._run_selector(r, previous)
        return self._keep_selection(r)

    def _run_selector(self, r: int, previous: dict[str, Any]) -> None:
        from megatron_bliss.selection.run import run_selection

        c = self.config
        work_dir = self._round_dir(r) / "select_run"
        earlier = EarlierRounds(r, self.run_dir, self._round_dir(r - 1), previous["checkpoints"])
        run_selection(
            c.method, select_stage_config(c, r, earlier), data_prefix=c.shards[r],
            run_dir=work_dir, target_data=c.target_data, target_format=c.target_format,
            tokenizer=c.tokenizer, target_model=previous["checkpoints"],
        )  # fmt: skip

    def _keep_selection(self, r: int) -> dict[str, Any]:
        """Move the selector's outputs into round_r/ (rank 0) and return the stage's result."""
        from megatron_bliss.selection.registry import get_selector_class

        c = self.config
        round_dir = self._round_dir(r)
        work_dir = round_dir / "select_run"
        for name in SELECTION_OUTPUTS:
            if (work_dir / name).exists():
                _replace(work_dir / name, round_dir / name)
        for name in get_selector_class(c.method).shared_outputs:  # the first round's is kept
            if (work_dir / name).exists() and not (self.run_dir / name).exists():
                _replace(work_dir / name, self.run_dir / name)
        meta = json.loads((round_dir / "selection.json").read_text())
        return {"flops": meta.get("flops_by_kind", {}), "num_selected": meta["num_selected"]}

    def _train_plan(
        self, r: int, upstream: str, steps: int, lr_multiplier: float, load: str | None,
        selection_flops: dict[str, float],
    ) -> TrainPlan:  # fmt: skip
        c = self.config
        round_dir = self._round_dir(r)
        config = train_stage_config(
            c, run_dir=round_dir, steps=steps, lr_multiplier=lr_multiplier,
            selection=round_dir / "selection.npy", shard=c.shards[r],
        )  # fmt: skip
        if (self.link is not None or c.snapshot_target) and (r < c.rounds() or r == 0):
            # the next round selects with this state (a warm-up always has a next round)
            start = steps - (c.warmup_steps if r == 0 else c.round_steps)
            config.checkpoint.snapshot_step = snapshot_step(start, steps, c.snapshot_fraction)
        marker = StageMarker(round_dir, "train", {"config": _comparable(config), "up": upstream})
        self.plans[r] = TrainPlan(r, config, marker, load, selection_flops)
        return self.plans[r]

    def _train(self, plan: TrainPlan) -> None:
        """Train round ``plan.r`` (resumed from its own checkpoints, even without ``latest``)
        and finish it; trained in this process, the rounds after it continue in the same engine
        (``_next_round``) as long as the engine can take them."""
        with self.world.stage(f"round {plan.r} train"):
            if self._done(plan.marker):
                self._offer_target(plan, final=True)
                self._finish_round(plan, {**self._result(plan.marker), "hash": plan.marker.hash})
                return
            self._offer_target(plan)  # resumed past its snapshot: offered now
            self._before(plan.r, "train")
            round_dir = Path(plan.config.run_dir)
            own = self.world.agree(lambda: has_step_folders(round_dir / "checkpoints"))
            plan.config.checkpoint.load = None if own or plan.load is None else str(plan.load)
            self.training = plan
            summary = self._launch_pretrain(plan.config, plan.r, "train")
            if self.launcher.type != "inprocess":
                self._trained(plan, summary)

    def _trained(self, plan: TrainPlan, summary: dict[str, Any]) -> None:
        """Record round ``plan.r``'s training as finished, then finish the round."""
        tokens = self._tokens(plan.load)
        self.world.write(lambda: plan.marker.complete(_train_result(summary, tokens)))
        self._offer_target(plan, final=True)
        self._finish_round(plan, {**self._result(plan.marker), "hash": plan.marker.hash})

    def _offer_target(self, plan: TrainPlan, final: bool = False) -> None:
        """Post round ``plan.r``'s target for the selection part (once, ``overlap``)."""
        if self.link is None or plan.r >= self.config.rounds() or plan.r in self.offered:
            return
        target = self._target_of(plan, final)
        if target is not None:
            self.offered.add(plan.r)
            self.link.post(f"target/{plan.r}", target)

    def _target_of(self, plan: TrainPlan, final: bool = True) -> dict[str, Any] | None:
        """What round ``plan.r + 1`` selects with: the round's snapshot when written; with
        ``final`` and none (a round resumed from a checkpoint past its snapshot step whose
        snapshot was never completed, or a reused warm-up trained without one), its last
        checkpoint; else None (not yet)."""
        step = plan.config.checkpoint.snapshot_step
        snapshot = Path(plan.config.run_dir) / "snapshot"
        written = self.world.agree(lambda: _latest_tag(snapshot) == tag_for(step))
        checkpoints = snapshot
        if not written:
            if not final:
                return None
            checkpoints = Path(plan.config.run_dir) / "checkpoints"
            step = int(self._result(plan.marker)["step"])
            logger.warning("round %d: no snapshot at step %s; the next round selects with "
                           "its last checkpoint", plan.r, plan.config.checkpoint.snapshot_step)  # fmt: skip
        return {"checkpoints": str(checkpoints), "step": step, "train_hash": plan.marker.hash,
                "snapshot": written}  # fmt: skip

    def _next_round(self, end: RoundEnd) -> NextRound | None:
        """The engine's round boundary: finish the round just trained (marker, decay branch,
        evaluation), select the next round's data with its checkpoint, and hand that round's
        training back to the running engine. None ends the engine's run: after the last round,
        or when the next round's training already has a state of its own to resume from."""
        self._trained(self.training, end.summary)
        r = self.training.r + 1
        if r > self.config.rounds() or not self.launcher.keep_engine:
            return None
        plan = self._plan(r)
        own = self.world.agree(lambda: has_step_folders(Path(plan.config.run_dir) / "checkpoints"))
        if own or self._done(plan.marker):
            return None  # the pipeline's loop takes it from here
        self._before(r, "train")
        self.training = plan
        plan.config.checkpoint.load = None  # the engine holds round r-1's state
        return NextRound(plan.config, self._engine_hooks(r, "train"))

    def _decay(self, r: int, train: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        decay_dir = self._round_dir(r) / "decay"
        config = train_stage_config(
            c, run_dir=decay_dir, steps=train["step"] + c.decay_steps,
            lr_multiplier=c.lr_round_factor**r, selection=self._round_dir(r) / "selection.npy",
            shard=c.shards[r], for_selection=False,
        )  # fmt: skip
        config.schedule.decay_steps = c.decay_steps
        marker = StageMarker(
            decay_dir, "decay", {"config": _comparable(config), "up": train["hash"]}
        )
        with self.world.stage(f"round {r} decay"):
            if not self._done(marker):
                self._before(r, "decay")
                own = self.world.agree(lambda: has_step_folders(decay_dir / "checkpoints"))
                config.checkpoint.load = None if own else train["checkpoints"]
                summary = self._launch_pretrain(config, r, "decay")
                tokens = train["consumed_tokens"]
                self.world.write(lambda: marker.complete(_train_result(summary, tokens)))
            return {**self._result(marker), "hash": marker.hash}

    def _evaluate(self, r: int, checkpoints: str, upstream: str, step: int) -> None:
        c = self.config
        if not c.eval.enabled or (c.eval.last_round_only and r != c.rounds()):
            return
        round_dir = self._round_dir(r)
        marker = StageMarker(round_dir, "eval", {"eval": _eval_inputs(c.eval), "up": upstream})
        with self.world.stage(f"round {r} eval"):
            if not self._done(marker):
                self._before(r, "eval")
                self.world.on_main(
                    f"round {r} eval",
                    lambda: self._export_and_evaluate(r, checkpoints, step, marker),
                )

    def _export_and_evaluate(self, r: int, checkpoints: str, step: int, marker: StageMarker):
        """Export round r's model and run lm-eval on it (rank 0; the others wait)."""
        from megatron_bliss.engine.export import export_hf
        from megatron_bliss.eval.harness import evaluate_model
        from megatron_bliss.eval.tensorboard import log_eval_metrics

        c = self.config
        round_dir = self._round_dir(r)
        model_dir = export_hf(checkpoints, round_dir / "hf", tokenizer=c.tokenizer)
        results = evaluate_model(
            model_dir, c.eval.tasks, task_data=self._task_data(), ppl_data=c.eval.ppl_data,
            limit=c.eval.limit, batch_size=c.eval.batch_size, device=c.eval.device,
            output=round_dir / "eval.json", target_set_task=c.target_set_task,
        )  # fmt: skip
        log_eval_metrics(round_dir, step, results)
        marker.complete({"tasks": sorted(results)})

    # ------------------------------------------------------------------ helpers
    def _done(self, marker: StageMarker) -> bool:
        """Whether the stage is finished, as rank 0 reads its marker (the same on every rank)."""
        return self.world.agree(marker.done)

    def _result(self, marker: StageMarker) -> dict[str, Any]:
        return self.world.agree(marker.result)

    def _launch_pretrain(self, config: PretrainConfig, r: int, name: str) -> dict[str, Any]:
        if self.launcher.type == "inprocess":
            from megatron_bliss.engine.trainer import pretrain

            hooks = self._engine_hooks(r, name)
            if name != "train":
                return _finished(pretrain(config, hooks), r, name)
            summary = pretrain(config, hooks, next_round=self._next_round)
            return _finished(summary, self.training.r, name)
        stage_yaml = Path(config.run_dir) / "stage_config.yaml"
        dump_yaml(config, stage_yaml)
        nproc = str(self.launcher.nproc_per_node)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", nproc, "-m", "megatron_bliss.cli", "pretrain",
            "--config", str(stage_yaml),
        ]  # fmt: skip
        threads = max(1, (os.cpu_count() or 1) // int(nproc))  # ranks must not oversubscribe cores
        env = {**os.environ, "OMP_NUM_THREADS": str(self.launcher.threads_per_rank or threads)}
        logger.info("round %d %s: %s", r, name, " ".join(command))
        summary_path = Path(config.run_dir) / "summary.json"
        summary_path.unlink(missing_ok=True)  # an earlier attempt's must not count for this one
        returncode = run_child(command, env)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        if summary is not None and summary.get("interrupted"):
            return _finished(summary, r, name)  # raises: torchrun reports 1 for any stop
        if returncode != 0 or summary is None:
            raise RuntimeError(f"round {r} {name}: torchrun exited with {returncode}")
        return summary

    def _engine_hooks(self, r: int, name: str) -> Hooks | None:
        hooks = self.hooks.train_hooks(r, name) if self.hooks.train_hooks else None
        if self.link is not None and name == "train":  # its snapshot goes to the selection part
            return SnapshotHooks(hooks, lambda path: self._offer_target(self.training))
        return hooks

    def _tokens(self, checkpoints: str | None) -> int:
        if checkpoints is None:
            return 0
        summary = Path(checkpoints).parent / "summary.json"
        return int(json.loads(summary.read_text())["consumed_tokens"]) if summary.exists() else 0

    def _task_data(self) -> str | None:
        task_data = self.config.eval.task_data
        if task_data != "auto":
            return task_data
        shared = shared_data_dir()
        return str(shared / "eval") if shared and (shared / "eval").is_dir() else None

    def _round_dir(self, r: int) -> Path:
        return self.run_dir / f"round_{r}"

    def _link_warmup(self) -> None:
        link = self.run_dir / "round_0"
        source = Path(self.config.reuse_warmup).resolve()
        if not (source / "stages").is_dir():
            raise MissingFileError(f"{source}: reuse_warmup is not a finished warm-up round")
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(source, link.parent), target_is_directory=True)

    def _before(self, r: int, name: str) -> None:
        logger.info("round %d: %s", r, name)
        if self.hooks.before_stage:
            self.hooks.before_stage(r, name)

    def _write_summary(self, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.config
        summary = {
            "method": c.method,
            "target_set": {
                "path": c.target_data,
                "format": c.target_format,
                "task": c.target_set_task,
            },
            "tokenizer": c.tokenizer,
            "seq_length": c.seq_length,
            "valid_prefix": c.pretrain.get("data", {}).get("valid_prefix"),
            "rounds": [{k: v for k, v in r.items() if k != "train_hash"} for r in rounds],
        }
        atomic_write_json(self.run_dir / "pipeline.json", summary)
        return summary


def _finished(summary: dict[str, Any], r: int, name: str) -> dict[str, Any]:
    """``summary`` of a training stage that ran to its end; a stage that stopped early (a signal,
    or a hook) raises instead, so its marker is never written and a rerun resumes it."""
    if summary.get("interrupted"):
        cause = "a stop hook" if summary.get("stopped_by") == "hook" else "a signal"
        raise Interrupted(
            f"round {r} {name}: interrupted by {cause} after step {summary['final_step']} "
            f"(checkpoint in {summary.get('checkpoint')}); rerun the same command to continue"
        )
    return summary


def _train_result(summary: dict[str, Any], previous_tokens: int) -> dict[str, Any]:
    tokens = int(summary["consumed_tokens"])
    per_token = float(summary.get("flops_per_token") or 0.0)
    return {
        "step": int(summary["final_step"]),
        "consumed_tokens": tokens,
        "flops": per_token * (tokens - previous_tokens),
        "checkpoints": str(Path(summary["run_dir"]) / "checkpoints"),
        "final_loss": summary.get("final_loss"),
    }


def _eval_inputs(section) -> dict[str, Any]:
    """What decides an evaluation's outputs (not which rounds get one)."""
    return {k: v for k, v in dataclasses.asdict(section).items() if k != "last_round_only"}


def _selection_flops(by_kind: dict[str, float] | float) -> dict[str, float]:
    """A selection's FLOPs as the pipeline records them (stage markers of older runs held one
    total, recorded as selector training)."""
    if not isinstance(by_kind, dict):
        by_kind = {"training": float(by_kind)}
    return {
        "selector_training": float(by_kind.get("training", 0.0)),
        "scoring": float(by_kind.get("scoring", 0.0)),
    }


def _latest_tag(checkpoint_dir: Path) -> str | None:
    latest = checkpoint_dir / "latest"
    return latest.read_text().strip() if latest.exists() else None


def _comparable(config: PretrainConfig) -> dict[str, Any]:
    """The parts of a stage config that decide its outputs: not where it resumes from or whether
    its checkpoints are trusted, and its own directory only as a placeholder (a reused warm-up
    lives under another run's path)."""
    values = dataclasses.asdict(config)
    ignored = ("load", "trust", "snapshot_step")  # a snapshot adds a file, changes nothing
    values["checkpoint"] = {k: v for k, v in values["checkpoint"].items() if k not in ignored}
    if not values["checkpoint"]["adam_state_params"]:  # off: hashes of earlier runs still match
        del values["checkpoint"]["adam_state_params"]
    run_dir = str(values.pop("run_dir"))
    return json.loads(json.dumps(values).replace(run_dir, "<RUN_DIR>"))


def _replace(source: Path, destination: Path) -> None:
    if destination.is_dir():
        shutil.rmtree(destination)
    elif destination.exists():
        destination.unlink()
    os.replace(source, destination)


def prepare_data(config: PipelineConfig, run_dir: Path) -> PipelineConfig:
    """The config with what the prepare stages made filled in: tokenizer, shards and validation
    shard from ``prepare.corpus``; the selection part of the target set and its held-out shard
    (``data.valid_sets.target``) when ``target_heldout_fraction`` is set."""
    from megatron_bliss.pipeline.prepare import prepare_shards, split_target_set

    pretrain = config.pretrain
    if config.prepare.corpus:
        prepared = prepare_shards(config.prepare, run_dir, config.tokenizer, config.rounds() + 1)
        if prepared.valid:
            pretrain = merge(pretrain, {"data": {"valid_prefix": prepared.valid}})
        config = dataclasses.replace(
            config, tokenizer=prepared.tokenizer, shards=prepared.shards, pretrain=pretrain
        )
    if config.target_heldout_fraction > 0:
        if config.tokenizer is None:
            raise ConfigError("target_heldout_fraction needs a tokenizer (or prepare.corpus)")
        pool = config.prepare.corpus + config.prepare.warmup_corpus
        split = split_target_set(
            config.target_data, config.target_heldout_fraction, run_dir / "data",
            config.tokenizer, pool,
        )  # fmt: skip
        pretrain = merge(pretrain, {"data": {"valid_sets": {"target": split.heldout_prefix}}})
        config = dataclasses.replace(config, target_data=split.select, pretrain=pretrain)
    return config


def run_pipeline(
    config: PipelineConfig,
    hooks: PipelineHooks | None = None,
    *,
    where: str = "pipeline",
    overrides: list[str] | None = None,
    world: PipelineWorld | None = None,
) -> dict[str, Any]:
    """Check every stage's settings and inputs (``preflight``), then run or resume the rounds;
    ``where`` and ``overrides`` name the config file and command line in error messages.

    Under a launcher (torchrun, srun, deepspeed) every rank calls this: the process group is
    made here, once, and the checks run on rank 0 (their error reaches every rank)."""
    if world is None:
        ranks = selection_ranks(config.overlap, config.group_size, where)
        world = PipelineWorld.join(training_device_type(config.pretrain), ranks)
    with guarded(world):
        if is_selection_part(world):
            return run_selection_part(world)
        with world.stage("preflight"):
            world.agree(lambda: preflight(config, where, overrides))
        return Pipeline(config, hooks, world).run()


def run_selection_part(world: PipelineWorld) -> dict[str, Any]:
    """The selection part of an overlapped job: the training part's prepared config, then
    every round's selection (``overlap.py``)."""
    link = PartLink(world, world.part)
    config = link.wait("config", "the prepared config (training ranks)")
    Pipeline(config, world=world).select_rounds()
    return {"part": world.part.name, "rounds": config.rounds()}


def training_device_type(pretrain: dict[str, Any]) -> str:
    """The device type of the training stages (``pretrain.train.device``), which the process
    group is made for."""
    from megatron_bliss.utils.device import resolve_device

    device = (pretrain.get("train") or {}).get("device") or "auto"
    return resolve_device(device, "pretrain.train.device").type
