"""``megatron-bliss select`` and ``score`` end to end on the tiny shard fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_bliss.cli import main
from megatron_bliss.utils.paths import REPO_ROOT

CONFIG = str(REPO_ROOT / "configs" / "select_tiny_cpu.yaml")

TINY_BLISS = [
    "seq_length=32",
    "target_preset=pythia-tiny",
    "target_warmup_steps=4",
    "target_warmup_batch_size=4",
    "target_limit=16",
    "target_max_length=64",
    "bliss.proxy_init=null",  # the shipped config copies the target; this run warms a proxy up
    "bliss.proxy_preset=pythia-tiny",
    "bliss.proxy_warmup_steps=4",
    "bliss.proxy_warmup_batch_size=4",
    "bliss.outer_steps=3",
    "bliss.batch_size=4",
    "bliss.target_batch_size=4",
    "bliss.log_interval=1",
    "bliss.score_precision=float32",
]


@pytest.fixture(scope="module")
def bliss_run(tmp_path_factory, tiny_shard, tokenizer_dir, corpus_jsonl):
    run_dir = tmp_path_factory.mktemp("select") / "bliss"
    code = main(
        ["select", "--method", "bliss", "--config", CONFIG,
         "--data-prefix", tiny_shard, "--target-data", str(corpus_jsonl),
         "--tokenizer", str(tokenizer_dir), "--run-dir", str(run_dir), "--fraction", "0.25",
         *TINY_BLISS]
    )  # fmt: skip
    assert code == 0
    return run_dir


def test_select_bliss_writes_contract_outputs(bliss_run, tiny_shard):
    from megatron_bliss.data.pool import SequencePool

    pool = SequencePool(tiny_shard, 32)
    scores = np.load(bliss_run / "scores.npy")
    selection = np.load(bliss_run / "selection.npy")
    meta = json.loads((bliss_run / "selection.json").read_text())
    assert scores.dtype == np.float32 and scores.shape == (len(pool),)
    assert selection.dtype == np.int64 and len(selection) == int(0.25 * len(pool))
    assert np.all(np.diff(selection) > 0)
    assert meta["method"] == "bliss" and meta["seq_length"] == 32
    assert meta["num_selected"] == len(selection) and meta["flops"] > 0
    assert (bliss_run / "score_model" / "model.safetensors").exists()
    assert (bliss_run / "config.yaml").exists() and (bliss_run / "proxy_warmup").is_dir()
    assert len((bliss_run / "bliss_metrics.jsonl").read_text().splitlines()) == 3
    kept_min = scores[selection].min()
    assert (scores[np.setdiff1d(np.arange(len(pool)), selection)] <= kept_min).all()


def test_score_cli_reproduces_select_scores(bliss_run, tiny_shard, tmp_path):
    out = tmp_path / "scores.npy"
    code = main(
        ["score", "--scorer", str(bliss_run / "score_model"), "--data-prefix", tiny_shard,
         "--out", str(out), "--fraction", "0.25", "--batch-size", "7", "--chunk-size", "10",
         "--precision", "float32"]
    )  # fmt: skip
    assert code == 0
    np.testing.assert_allclose(
        np.load(out), np.load(bliss_run / "scores.npy"), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "selection.npy"), np.load(bliss_run / "selection.npy")
    )
    assert not (tmp_path / "scores.npy.parts").exists()


def test_select_rejects_unknown_config_key(tmp_path, tiny_shard, tokenizer_dir, capsys):
    code = main(
        ["select", "--method", "random", "--config", CONFIG,
         "--data-prefix", tiny_shard, "--tokenizer", str(tokenizer_dir),
         "--run-dir", str(tmp_path), "bliss.outer_stepz=3"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "outer_stepz" in err and "did you mean 'outer_steps'?" in err
    assert err.strip().endswith("(from the override 'bliss.outer_stepz=3')")


def test_select_random_through_registry(tmp_path, tiny_shard):
    code = main(
        ["select", "--method", "random", "--config", CONFIG,
         "--data-prefix", tiny_shard, "--run-dir", str(tmp_path), "seq_length=32", "--seed", "3"]
    )  # fmt: skip
    assert code == 0
    meta = json.loads((tmp_path / "selection.json").read_text())
    assert meta["method"] == "random" and meta["seed"] == 3
    assert not (tmp_path / "score_model").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--fraction", "1.5"], "fraction must be in (0, 1], got 1.5"),
     (["--fraction", "0"], "fraction must be in (0, 1], got 0.0"),
     (["--gumbel-temperature", "-1"], "gumbel_temperature must be >= 0"),
     (["seq_length=100000"], "tokens hold no sequence of length 100000"),
     (["--target-data", "missing.jsonl"], "missing.jsonl: target set not found"),
     (["--target-format", "prompt_continuation"], "missing field 'prompt'")],
)  # fmt: skip
def test_select_bad_input_is_one_line_before_any_work(
    tmp_path, tiny_shard, tokenizer_dir, corpus_jsonl, capsys, extra, message
):
    """Checked before the (slow) warm-ups: nothing is trained and no run directory is made."""
    target = ["--target-data", str(corpus_jsonl)] if "--target-data" not in extra else []
    code = main(
        ["select", "--method", "bliss", "--config", CONFIG, "--data-prefix", tiny_shard,
         "--tokenizer", str(tokenizer_dir), "--run-dir", str(tmp_path / "run"), *target, *extra]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_select_refuses_a_tokenizer_that_cannot_have_made_the_shard(
    tmp_path, tokenizer_dir, corpus_jsonl, capsys
):
    from tests.conftest import build_shard

    shard = build_shard(tmp_path / "big_vocab_text_document", [list(range(400, 700))] * 4)
    code = main(
        ["select", "--method", "random", "--config", CONFIG, "--data-prefix", shard,
         "--tokenizer", str(tokenizer_dir), "--target-data", str(corpus_jsonl),
         "--run-dir", str(tmp_path / "run"), "seq_length=32"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds token id 699 but the tokenizer has only 512 tokens" in err
    assert not (tmp_path / "run").exists()


def test_tokenizer_comes_from_a_checkpoint_targets_run(tmp_path, tokenizer_dir):
    import shutil

    from megatron_bliss.selection.run import tokenizer_of_target

    step = tmp_path / "run" / "checkpoints" / "global_step2"
    step.mkdir(parents=True)
    (step / "mp_rank_00_model_states.pt").write_bytes(b"")
    (step / "meta.json").write_text("{}")
    (step.parent / "latest").write_text("global_step2")
    assert tokenizer_of_target(step.parent) is None  # no copy in the run yet
    shutil.copytree(tokenizer_dir, tmp_path / "run" / "tokenizer")
    for target in (step.parent, step):
        assert len(tokenizer_of_target(target)) == 512


def test_select_with_a_target_model_that_is_not_one_makes_no_run_dir(
    tmp_path, tiny_shard, tokenizer_dir, capsys
):
    code = main(
        ["select", "--method", "perplexity", "--config", CONFIG, "--data-prefix", tiny_shard,
         "--tokenizer", str(tokenizer_dir), "--target-model", str(tmp_path),
         "--run-dir", str(tmp_path / "run"), "seq_length=32"]
    )  # fmt: skip
    assert code == 2 and "not a DeepSpeed checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_outputs_through_a_file_are_one_line(tmp_path, tiny_shard, bliss_run, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    select = ["select", "--method", "random", "--config", CONFIG, "--data-prefix", tiny_shard,
              "--run-dir", str(blocker), "seq_length=32"]  # fmt: skip
    score = ["score", "--scorer", str(bliss_run / "score_model"), "--data-prefix", tiny_shard,
             "--out", str(blocker / "scores.npy")]  # fmt: skip
    for argv, message in ((select, "--run-dir is a file"), (score, "is under the file")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert blocker.read_text() == "x"


def test_score_out_with_another_name_writes_no_second_scores_file(bliss_run, tiny_shard, tmp_path):
    out = tmp_path / "round2_scores.npy"
    code = main(
        ["score", "--scorer", str(bliss_run / "score_model"), "--data-prefix", tiny_shard,
         "--out", str(out), "--fraction", "0.25", "--precision", "float32"]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round2_scores.npy", "round2_scores.selection.json", "round2_scores.selection.npy"
    ]  # fmt: skip
    selection = np.load(tmp_path / "round2_scores.selection.npy")
    assert len(selection) == int(0.25 * len(np.load(out)))


def test_stand_in_target_is_reused_only_for_the_same_settings(
    tmp_path, tiny_shard, tokenizer_dir, monkeypatch
):
    from megatron_bliss.selection import proxy

    warmups = []
    real_warmup = proxy.warmup_lm

    def counted(model, pool, **settings):
        warmups.append(settings["steps"])
        return real_warmup(model, pool, **settings)

    monkeypatch.setattr(proxy, "warmup_lm", counted)
    run_dir = tmp_path / "run"
    record = run_dir / "target_warmup" / "stand_in.json"
    base = ["select", "--method", "perplexity", "--config", CONFIG, "--data-prefix", tiny_shard,
            "--tokenizer", str(tokenizer_dir), "--run-dir", str(run_dir), "seq_length=32",
            "target_preset=pythia-tiny", "target_warmup_batch_size=2"]  # fmt: skip
    assert main([*base, "target_warmup_steps=1"]) == 0
    first_scores = np.load(run_dir / "scores.npy")
    assert main([*base, "target_warmup_steps=1"]) == 0
    assert warmups == [1]  # same settings: the saved target is reused, not trained again
    np.testing.assert_array_equal(np.load(run_dir / "scores.npy"), first_scores)
    assert main([*base, "target_warmup_steps=2"]) == 0
    assert warmups == [1, 2]  # other settings: warmed up again
    assert json.loads(record.read_text())["steps"] == 2
    assert not (run_dir / ".target_warmup.tmp").exists()


def test_methods_without_a_target_model_do_not_load_one(tmp_path, tiny_shard, tokenizer_dir):
    step = tmp_path / "checkpoints" / "global_step1"
    step.mkdir(parents=True)
    (step / "meta.json").write_text("{}")  # loading it would fail: no weights, no model_config
    (step.parent / "latest").write_text("global_step1")
    code = main(
        ["select", "--method", "random", "--config", CONFIG, "--data-prefix", tiny_shard,
         "--tokenizer", str(tokenizer_dir), "--target-model", str(step.parent),
         "--run-dir", str(tmp_path / "run"), "seq_length=32"]
    )  # fmt: skip
    assert code == 0 and (tmp_path / "run" / "selection.npy").exists()
