"""What the GPU measurements of issue #14 run, checked without a GPU: train_throughput's variants
and micro-batch search, and the prepared suite's commands."""

from __future__ import annotations

import importlib.util
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


def test_selection_cost_flags_become_select_config_overrides():
    from megatron_bliss.selection.config import load_select_config

    cost = load_benchmark("selection_cost")
    args = cost.argparse.Namespace(
        device="cpu", seq_length=1024, target_preset="pythia-1b", proxy_preset="pythia-160m",
        set=["bliss.score_batch_size=256"],
    )  # fmt: skip
    overrides = cost.select_overrides(args)
    assert overrides == [
        "device=cpu", "seq_length=1024", "target_preset=pythia-1b",
        "bliss.proxy_preset=pythia-160m", "bliss.score_batch_size=256",
    ]  # fmt: skip
    select = load_select_config(REPO_ROOT / "configs" / "select_tiny_cpu.yaml", overrides)
    bliss = select.method_config("bliss")
    assert (select.seq_length, select.target_preset) == (1024, "pythia-1b")
    assert (bliss.proxy_preset, bliss.score_batch_size) == ("pythia-160m", 256)
