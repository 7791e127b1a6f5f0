"""Where the demo's corpus and tokenizer come from (logged, so every run says what it used).

Corpus: a given path; else the C4 sample in ``shared_data_dir()/c4``; else a small slice of
``allenai/c4`` streamed from the hub when online; else the built-in Python documentation text
(a smoke run). Tokenizer: a given path; else the Pythia (GPT-NeoX) tokenizer in
``shared_data_dir()/tokenizers``; else the hub's ``EleutherAI/pythia-160m``; else one trained on
the corpus.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

from megatron_bliss.data.builtin_corpus import write_builtin_jsonl
from megatron_bliss.utils.hub import hub_reachable
from megatron_bliss.utils.paths import shared_data_dir

logger = logging.getLogger(__name__)

C4_SAMPLE_FILES = (
    "c4-en-train.00000-of-01024.first1000.jsonl",
    "c4-en-validation.2k.jsonl",
)
LAMBADA_FILE = "eval/lambada/lambada_test.jsonl"
WARMUP_WEB_TEXT = "other/openwebtext-1000.jsonl"
SMOKE_LABEL = "smoke run: built-in Python documentation text"
HUB_TOKENIZER = "EleutherAI/pythia-160m"


def _hub_c4_slice(workdir: Path, documents: int = 2000) -> Path | None:
    try:
        from datasets import load_dataset

        stream = load_dataset("allenai/c4", "en", split="train", streaming=True)
        path = workdir / "c4-hub-slice.jsonl"
        with open(path, "w") as handle:
            for row in itertools.islice(stream, documents):
                handle.write(json.dumps({"text": row["text"]}) + "\n")
        return path
    except Exception as error:  # network trouble of any kind: fall through to the next source
        logger.warning("could not stream allenai/c4 (%s)", str(error).splitlines()[0][:200])
        return None


def resolve_corpus(path: str | None, workdir: str | Path) -> tuple[list[Path], str]:
    """(corpus files, label) following the demo's resolution order."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if path:
        from megatron_bliss.data.readers import expand_inputs

        files, label = expand_inputs([path]), f"given corpus {path}"
    elif (shared := shared_data_dir()) and (found := _shared_c4(shared)):
        files, label = found, "C4 sample from ../shared/data/c4"
    elif hub_reachable() and (slice_path := _hub_c4_slice(workdir)):
        files, label = [slice_path], "allenai/c4 slice streamed from the hub"
    else:
        files, label = [write_builtin_jsonl(workdir / "builtin_corpus.jsonl")], SMOKE_LABEL
    logger.info("corpus: %s (%d file(s))", label, len(files))
    return files, label


def resolve_target_set() -> tuple[Path | None, str]:
    """(LAMBADA passages, label) from ``shared_data_dir()`` for the target-directed setting, or
    (None, why) when they are not there."""
    shared = shared_data_dir()
    if shared and (shared / LAMBADA_FILE).is_file():
        return shared / LAMBADA_FILE, "LAMBADA passages from ../shared/data/eval"
    return None, "no LAMBADA file in ../shared/data"


def resolve_warmup_corpus() -> list[Path]:
    """Web text that only the warm-up trains on (OpenWebText from ``shared_data_dir()``), or []."""
    shared = shared_data_dir()
    path = shared / WARMUP_WEB_TEXT if shared else None
    return [path] if path is not None and path.is_file() else []


def _shared_c4(shared: Path) -> list[Path]:
    return [shared / "c4" / name for name in C4_SAMPLE_FILES if (shared / "c4" / name).exists()]


def resolve_tokenizer(
    path: str | None, corpus_files: list[Path], workdir: str | Path, vocab_size: int = 8192
) -> tuple[str, str]:
    """(tokenizer spec for ``load_tokenizer``, label) following the demo's resolution order."""
    shared = shared_data_dir()
    pythia = shared / "tokenizers" / "gpt-neox-20b_tokenizer.json" if shared else None
    if path:
        spec, label = str(path), f"given tokenizer {path}"
    elif pythia is not None and pythia.exists():
        spec, label = str(pythia), "Pythia GPT-NeoX tokenizer from ../shared/data/tokenizers"
    elif hub_reachable() and _hub_tokenizer_loads():
        spec, label = HUB_TOKENIZER, f"{HUB_TOKENIZER} tokenizer from the hub"
    else:
        from megatron_bliss.data.tokenizer_training import train_tokenizer

        output = Path(workdir) / "tokenizer"
        train_tokenizer([str(f) for f in corpus_files], vocab_size, output)
        spec, label = str(output), f"byte-level BPE ({vocab_size}) trained on the corpus"
    logger.info("tokenizer: %s", label)
    return spec, label


def _hub_tokenizer_loads() -> bool:
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(HUB_TOKENIZER)
        return True
    except Exception as error:
        logger.warning("could not load %s (%s)", HUB_TOKENIZER, str(error).splitlines()[0][:200])
        return False
