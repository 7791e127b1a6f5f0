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
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_bliss.data.readers import expand_inputs, iter_batches

logger = logging.getLogger(__name__)

EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|padding|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE as a ``PreTrainedTokenizerFast`` (eos id 0, pad id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
        with open(corpus, "w") as handle:
            for text in texts:
                handle.write(text.replace("\n", " ") + "\n")
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(folder) / "sp"),
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            character_coverage=1.0,
            minloglevel=2,
        )
        (output / "tokenizer.model").write_bytes((Path(folder) / "sp.model").read_bytes())
    tokenizer = LlamaTokenizer.from_pretrained(output)
    tokenizer.save_pretrained(output)
    return tokenizer


def corpus_texts(inputs: list[str], key: str = "text", limit: int | None = None) -> Iterator[str]:
    """Texts of a corpus (same inputs as preprocess), streamed."""
    paths = expand_inputs(inputs)

    def texts() -> Iterator[str]:
        for batch in iter_batches(paths, [key]):
            if batch.columns is not None:
                yield from (t for t in batch.columns[key] if t)
                continue
            for offset, line in enumerate(batch.lines):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[key]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(
                        f"{batch.path}:{batch.first_line + offset}: malformed line or no '{key}'"
                    ) from None
                if text:
                    yield text

    return itertools.islice(texts(), limit)


def train_tokenizer(
    inputs: list[str], vocab_size: int, output: str | Path, kind: str = "bpe", key: str = "text"
):
    output = Path(output)
    texts = corpus_texts(inputs, key)
    if kind == "bpe":
        tokenizer = train_bpe_tokenizer(texts, vocab_size)
        tokenizer.save_pretrained(output)
    elif kind == "sentencepiece":
        tokenizer = train_sentencepiece_tokenizer(texts, vocab_size, output)
    else:
        raise ValueError(f"--type {kind}: expected bpe or sentencepiece")
    logger.info("trained a %d-token %s tokenizer -> %s", len(tokenizer), kind, output)
    return tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, help="corpus files, globs or dirs")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--output", required=True, help="Hugging Face tokenizer directory")
    parser.add_argument("--type", choices=["bpe", "sentencepiece"], default="bpe")
    parser.add_argument("--json-key", default="text")


def run(args: argparse.Namespace) -> int:
    train_tokenizer(args.input, args.vocab_size, args.output, args.type, args.json_key)
    return 0
