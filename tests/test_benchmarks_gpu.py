"""What the GPU measurements of issue #14 run, checked without a GPU: train_throughput's variants
and micro-batch search, the prepared suite's commands, and selection_cost's hypergradient pair."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch

from megatron_bliss.utils.paths import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def load_benchmark(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return load_benchmark("train_throughput")


def test_throughput_defaults_keep_the_cpu_variants(throughput):
    args = throughput.parse_args([])
    assert [(v.name, v.ds_config, v.stage) for v in args.variants] == [
        ("zero2", "ds_configs/cpu_zero2.json", 2),
        ("zero3", "ds_configs/cpu_zero3.json", 3),
    ]
    assert (args.compile, args.liger, args.find_max_micro_batch) == (False, "auto", False)


def test_throughput_variants_name_a_json_and_overrides(throughput, tmp_path):
    args = throughput.parse_args(
        [
            "--ds-config", "ds_configs/pythia_1b.json", "--compile", "--liger", "off",
            "--variant", "zero3_tuned=ds_configs/gpu_zero3_tuned.json",
            "--variant", "leaf=ds_configs/gpu_zero3_tuned.json deepspeed.zero3_leaf_blocks=true",
        ]
    )  # fmt: skip
    names = [v.name for v in args.variants]
    assert names == ["zero2", "zero3", "zero3_tuned", "leaf"]
    assert args.variants[1].ds_config == "ds_configs/pythia_1b.json"
    leaf = args.variants[3]
    config = throughput.engine_config(args, "shard", tmp_path, leaf, 512)
    assert config.deepspeed.zero3_leaf_blocks is True and config.train.compile is True
    assert config.model.liger_kernel == "off" and config.deepspeed.zero_stage is None
    assert throughput.zero_stage(config) == 3
    assert (
        throughput.zero_stage(throughput.engine_config(args, "s", tmp_path, args.variants[1], 512))
        == 3
    )
    for bad in (["--variant", "nojson"], ["--variant", "plain=x.json"], ["--stages", "2,2"]):
        with pytest.raises(SystemExit):
            throughput.parse_args(bad)


def test_max_micro_batch_search_doubles_then_bisects_past_out_of_memory(
    throughput, monkeypatch, tmp_path
):
    from megatron_bliss.engine import trainer

    tried = []

    def pretrain(config, hooks=None):
        tried.append(config.train.micro_batch_size)
        assert config.train.global_batch_size == config.train.micro_batch_size
        assert config.train.train_steps == 2
        if config.train.micro_batch_size > 21:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {}

    monkeypatch.setattr(trainer, "pretrain", pretrain)
    args = throughput.parse_args(["--stages", "3", "--find-max-micro-batch"])
    found = throughput.find_max_micro_batch(args, "shard", tmp_path, args.variants[0], 512)
    assert tried == [8, 16, 32, 24, 20, 22, 21]
    assert (found["largest_fitting"], found["smallest_failing"]) == (21, 22)
    assert found["probes"][2]["error"].startswith("OutOfMemoryError: CUDA out of memory")

    def broken(config, hooks=None):
        raise ValueError("not a memory problem")

    monkeypatch.setattr(trainer, "pretrain", broken)
    with pytest.raises(ValueError, match="not a memory problem"):
        throughput.find_max_micro_batch(args, "shard", tmp_path, args.variants[0], 512)


SUITE = BENCHMARKS / "gpu_suite.sh"
STEPS = ["tt_1b", "tt_410m", "sel", "tt_llama", "compile_1b", "mmb_1b", "mmb_2p8b", "compile_410m"]


def dry_run(*flags: str) -> dict[str, list[str]]:
    """Step name -> its command line, as ``gpu_suite.sh --dry-run`` prints it."""
    env = {**os.environ, "GPU_TAG": "testgpu"}
    done = subprocess.run(
        ["bash", str(SUITE), "--dry-run", *flags],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    commands = {}
    for line in done.stdout.splitlines():
        name, rest = line.split("] ", 1)
        words = shlex.split(rest)
        if words[0] == "timeout":
            assert words[1].endswith("s") and int(words[1][:-1]) <= 180
            words = words[2:]
        commands[name.lstrip("[")] = words
    return commands


def script_args(words: list[str], script: str) -> list[str]:
    return words[words.index(f"benchmarks/{script}.py") + 1 :]


def test_the_suite_is_valid_bash_and_its_dry_run_lists_every_step():
    subprocess.run(["bash", "-n", str(SUITE)], check=True)
    commands = dry_run()
    assert list(commands) == [*STEPS, "summary"]
    assert list(dry_run("--only", "sel,mmb_1b")) == ["sel", "mmb_1b", "summary"]
    wrong = subprocess.run(["bash", str(SUITE), "--bogus"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown argument" in wrong.stderr


def test_the_suites_commands_parse_and_write_gpu_named_json(throughput):
    commands = dry_run()
    for name in STEPS:
        words = commands[name]
        output = words[words.index("--output") + 1]
        assert output.startswith("benchmarks/results/") and "_testgpu_" in output, output
        if "benchmarks/train_throughput.py" in words:
            args = throughput.parse_args(script_args(words, "train_throughput"))
            assert args.device == "cuda" and args.precision == "bf16" and args.seq == 1024
            for variant in args.variants:
                assert (REPO_ROOT / variant.ds_config).exists()
    sweep = throughput.parse_args(script_args(commands["tt_1b"], "train_throughput"))
    assert [v.name for v in sweep.variants] == ["zero2", "zero3", "zero3_tuned", "zero3_tuned_leaf"]
    cost = load_benchmark("selection_cost")
    args = cost.parse_args(script_args(commands["sel"], "selection_cost"))
    assert (args.device, args.step_batch, args.upper_batch, args.vocab_size) == (
        "cuda", 4, 16, 50304,
    )  # fmt: skip
    from megatron_bliss.selection.config import load_select_config

    overrides = [o.replace("device=cuda", "device=cpu") for o in cost.select_overrides(args)]
    select = load_select_config(args.config, overrides)
    bliss = select.method_config("bliss")
    assert (select.seq_length, select.target_preset) == (1024, "pythia-1b")
    assert (bliss.proxy_preset, bliss.batch_size, bliss.score_batch_size) == ("pythia-160m", 4, 256)


def test_the_summary_reads_the_status_and_every_json(tmp_path):
    summary = load_benchmark("gpu_suite_summary")
    throughput_report = {
        "preset": "pythia-1b", "compile": False, "liger": "auto",
        "variants": {"zero2": {"zero_stage": 2}, "zero3": {"zero_stage": 3}},
        "results": {
            "plain": {"tokens_per_second_median": 60000.0},
            "zero2": {"tokens_per_second_median": 70000.0, "mfu": 0.42, "peak_allocated_gb": 30.0},
            "zero3": {"tokens_per_second_median": 63000.0, "mfu": 0.38, "peak_allocated_gb": 25.0},
        },
        "ratio_median": {"zero2": 1.17, "zero3": 1.05}, "ratio_to_zero2": {"zero2": 1.0, "zero3": 0.9},
        "errors": {"zero3_tuned": "OutOfMemoryError: CUDA out of memory"},
        "software": {"torch": "2.13.0", "gpu": "NVIDIA H100"},
    }  # fmt: skip
    search = {
        "preset": "pythia-2.8b", "results": {},
        "max_micro_batch": {"zero3": {"largest_fitting": 12, "smallest_failing": 16, "probes": [
            {"micro_batch": 8, "fits": True, "peak_allocated_gb": 60.0},
            {"micro_batch": 16, "fits": False}, {"micro_batch": 12, "fits": True}]}},
    }  # fmt: skip
    selection = {
        "shapes": {"proxy_preset": "pythia-160m"}, "outer_step": {"outer_step_seconds": 0.5,
        "outer_over_plain": 5.0}, "scoring_sequences_per_second": 400.0,
        "scoring_precision": "bfloat16", "scoring_speedup": 3.0,
    }  # fmt: skip
    rows = ["step\tstatus\trc\tseconds\toutput\tlog"]
    for name, report in (("tt_1b", throughput_report), ("mmb_2p8b", search), ("sel", selection)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(report))
        rows.append(f"{name}\tok\t0\t60\t{path}\tlog")
    rows.append("compile_410m\tskipped\t-\t0\tnone.json\t-")
    (tmp_path / "gpu_suite_h100_status.tsv").write_text("\n".join(rows) + "\n")

    markdown, data = summary.summarize(tmp_path, "h100")
    assert "| compile_410m | skipped |" in markdown
    assert "| tt_1b | pythia-1b | zero3 | 3 | 63,000 | 38.0% | 1.05 | 0.90 | 25.0 |" in markdown
    assert "zero3_tuned | failed: OutOfMemoryError" in markdown
    assert "largest micro-batch 12 (tried 8 (60.0 GB), 16 OOM, 12)" in markdown
    estimate = data["paper_round"]  # 10000 x 512 x 1024 tokens over 8 x 70k tokens/s
    assert estimate["round_target_training_hours"] == pytest.approx(5.24e9 / 8 / 7e4 / 3600, 0.01)
    assert estimate["bilevel_hours"] == pytest.approx(3000 * 0.5 / 3600, 0.01)
    assert estimate["shard_scoring_hours"] == pytest.approx(25.6e6 / 8 / 400 / 3600, 0.01)
    assert summary.main(["--results", str(tmp_path), "--tag", "h100"]) == 0
    assert (tmp_path / "gpu_suite_h100_summary.md").read_text() == markdown


def test_the_suite_records_each_step_and_skips_what_the_budget_cannot_hold(tmp_path):
    """A stand-in python (every command succeeds at once, except failing ones) through the real
    script: one status row per step, steps whose minimum exceeds the budget left are skipped.
    The budget of 59 s leaves mmb_1b (needs 50) nine seconds of slack on a loaded machine while
    tt_1b and mmb_2p8b (need 60) are skipped from the start."""
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/bash\necho "$@" >> "$FAKE_LOG"\ncase "$*" in *llama*) exit 3 ;; esac\nexit 0\n'
    )
    fake.chmod(0o755)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHON": str(fake), "GPU_TAG": "fake", "FAKE_LOG": str(tmp_path / "log")}
    done = subprocess.run(
        ["bash", str(SUITE), "--results", str(results), "--budget", "59"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = (results / "gpu_suite_fake_status.tsv").read_text().splitlines()
    status = {row.split("\t")[0]: row.split("\t")[1] for row in rows[1:]}
    assert status == {
        "tt_1b": "skipped", "tt_410m": "skipped", "sel": "skipped", "tt_llama": "failed",
        "compile_1b": "skipped", "mmb_1b": "ok", "mmb_2p8b": "skipped", "compile_410m": "skipped",
    }  # fmt: skip
    calls = (tmp_path / "log").read_text()
    assert "gpu_suite_summary.py --results" in calls and "--find-max-micro-batch" in calls
    assert (results / "gpu_suite_fake_logs" / "mmb_1b.log").exists()


@pytest.mark.parametrize("alignment", ["cosine", "dot"])
@pytest.mark.parametrize("head", ["likelihood_ratio", "regression"])
def test_selection_cost_compares_equal_hypergradients_for_each_score_head(head, alignment):
    """The suite's ``sel`` step times the batched hypergradient against the per-sample loop: both
    must run, and agree, with either score model (the likelihood ratio holds a frozen copy) and
    either alignment (the loop divides by ``||g_i||`` when the selector does)."""
    from types import SimpleNamespace

    import numpy as np

    from megatron_bliss.models.presets import build_model
    from megatron_bliss.selection.bliss import BlissSelector
    from megatron_bliss.selection.score_model import LikelihoodRatioScoreModel, ScoreModel

    cost = load_benchmark("selection_cost")
    torch.manual_seed(0)
    proxy = build_model("pythia-tiny", 512, 33, attn_implementation="sdpa")
    if head == "likelihood_ratio":
        score_model = LikelihoodRatioScoreModel.from_causal_lm(proxy, scale=3.0)
    else:
        score_model = ScoreModel.from_causal_lm(proxy, head_init_std=0.5)
    rows = np.random.default_rng(0).integers(0, 512, (6, 17))
    selector = BlissSelector.__new__(BlissSelector)  # only what hypergradient_cost reads
    selector.config = BlissSelector.Config(alignment=alignment, dots="fd")
    selector.proxy, selector.score_model = proxy, score_model
    selector.direction = SimpleNamespace(moments=None)
    selector.context = SimpleNamespace(
        pool=SimpleNamespace(batch=lambda i: rows[i]), device=torch.device("cpu")
    )
    result = cost.hypergradient_cost(selector, batch=6, repeats=1)
    assert result["cosine"] > 0.99 and result["relative_error"] < 1e-2, result
