"""Train a tokenizer on a corpus (``megatron-bliss train-tokenizer``, ``tools/train_tokenizer.py``).

Two kinds, both saved as a Hugging Face tokenizer directory that ``AutoTokenizer`` loads:

- ``bpe``: byte-level BPE (``tokenizers``), GPT-NeoX style; ``<|endoftext|>`` (id 0) is eos and
  ``<|padding|>`` (id 1) is pad.
- ``sentencepiece``: sentencepiece BPE with byte fallback (LLaMA style), saved as
  ``tokenizer.model`` plus the converted fast tokenizer; ``</s>`` is eos.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_bliss.data.readers import expand_inputs, iter_batches
from megatron_bliss.data.tokenize_files import batch_records
from megatron_bliss.data.tokenizer import holds_tokenizer
from megatron_bliss.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|padding|>"
MAX_SENTENCE_BYTES = 1 << 16  # sentencepiece's default, 4192, drops long lines unannounced
BPE_MIN_VOCAB = 256 + 2  # the byte alphabet and the two special tokens


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE as a ``PreTrainedTokenizerFast`` (eos id 0, pad id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < BPE_MIN_VOCAB:
        raise ConfigError(
            f"--vocab-size {vocab_size}: a byte-level BPE needs at least {BPE_MIN_VOCAB} "
            "(256 bytes + 2 special tokens)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def train_sentencepiece_tokenizer(texts: Iterable[str], vocab_size: int, output: Path):
    """sentencepiece BPE with byte fallback, saved (with its HF conversion) into ``output``."""
    import sentencepiece
    from transformers import LlamaTokenizer

    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus.txt"
        with open(corpus, "w", encoding="utf-8") as handle:
            # One sentence per line of text: sentencepiece silently skips sentences longer
            # than max_sentence_length, which whole C4 documents often are (15% of them > 4 KB).
            for text in texts:
                handle.writelines(line + "\n" for line in text.splitlines() if line.strip())
        try:
            sentencepiece.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=str(Path(folder) / "sp"),
                vocab_size=vocab_size,
                model_type="bpe",
                byte_fallback=True,
                character_coverage=1.0,
                max_sentence_length=MAX_SENTENCE_BYTES,
                minloglevel=2,
            )
        except RuntimeError as error:  # sentencepiece's checks: "INTERNAL: file(line) [cond] why"
            reason = str(error).strip().splitlines()[0].split("] ", 1)[-1]
            raise ConfigError(f"--vocab-size {vocab_size}: sentencepiece: {reason}") from None
        (output / "tokenizer.model").write_bytes((Path(folder) / "sp.model").read_bytes())
    tokenizer = LlamaTokenizer.from_pretrained(output)
    tokenizer.save_pretrained(output)
    return tokenizer


def corpus_texts(
    inputs: list[str], key: str | list[str] = "text", limit: int | None = None
) -> Iterator[str]:
    """Non-empty texts of a corpus (same inputs, and same ``FILE:LINE`` errors, as preprocess)."""
    keys = [key] if isinstance(key, str) else list(key)
    paths = expand_inputs(inputs)

    def texts() -> Iterator[str]:
        for batch in iter_batches(paths, keys):
            for line_number, record in batch_records(batch, keys):
                if isinstance(record, str):
                    raise InputError(f"{batch.path}:{line_number}: {record}")
                yield from (text for text in record if text)

    return itertools.islice(texts(), limit)


def nonempty_texts(inputs: list[str], key: str | list[str]) -> Iterator[str]:
    """``corpus_texts``, after checking that there is at least one text: trainers given nothing
    either fail deep inside (sentencepiece) or save a useless alphabet-only tokenizer (BPE)."""
    texts = corpus_texts(inputs, key)
    first = next(texts, None)
    if first is None:
        named = ", ".join(str(i) for i in inputs)
        raise InputError(f"{named}: no documents to train a tokenizer on")
    return itertools.chain([first], texts)


def check_output_dir(output: Path) -> None:
    """New, empty, or an earlier tokenizer (replaced); a file or other folder is refused."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output}: --output exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not holds_tokenizer(output):
        raise ConfigError(
            f"{output}: --output is a non-empty directory that holds no tokenizer; "
            "refusing to replace it"
        )


def train_tokenizer(
    inputs: list[str],
    vocab_size: int,
    output: str | Path,
    kind: str = "bpe",
    key: str | list[str] = "text",
):
    """Train on the corpus into a staging folder, renamed to ``output`` only when complete."""
    if kind not in ("bpe", "sentencepiece"):
        raise ConfigError(f"--type {kind}: expected bpe or sentencepiece")
    output = Path(output)
    check_output_dir(output)
    texts = nonempty_texts(inputs, key)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if kind == "bpe":
            tokenizer = train_bpe_tokenizer(texts, vocab_size)
            tokenizer.save_pretrained(staging)
        else:
            tokenizer = train_sentencepiece_tokenizer(texts, vocab_size, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    if len(tokenizer) < vocab_size:
        logger.warning(
            "the corpus supports only %d of the %d tokens asked for", len(tokenizer), vocab_size
        )
    logger.info("trained a %d-token %s tokenizer -> %s", len(tokenizer), kind, output)
    return tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, help="corpus files, globs or dirs")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--output", required=True, help="Hugging Face tokenizer directory")
    parser.add_argument("--type", choices=["bpe", "sentencepiece"], default="bpe")
    parser.add_argument(
        "--json-keys", "--json-key", dest="json_keys", nargs="+", default=["text"],
        help="field(s) whose text is trained on (default: text)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    train_tokenizer(args.input, args.vocab_size, args.output, args.type, args.json_keys)
    return 0
