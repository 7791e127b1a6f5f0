"""Shared fixtures: a tiny corpus, a tiny byte-level BPE tokenizer and a tiny indexed shard.

Everything is generated here (from text that ships with Python), so the suite never needs
``../shared/data``; tests that also use real data skip cleanly when it is absent.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


@pytest.fixture(scope="session")
def shared_data():
    """The optional real-data folder, or skip."""
    from megatron_bliss.utils.paths import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present")
    return path


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    from megatron_bliss.data.builtin_corpus import builtin_documents

    return builtin_documents(max_chars=1500)[:120]


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory, corpus_texts):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w") as handle:
        for text in corpus_texts:
            handle.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_texts):
    """A 512-token byte-level BPE saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus_texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|padding|>"
    )
    path = tmp_path_factory.mktemp("tokenizer")
    wrapped.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def build_shard(prefix, token_lists, dtype=np.uint16):
    """Write documents with megatron-core's builder (the reference writer)."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=dtype)
    for ids in token_lists:
        builder.add_item(torch.tensor(ids, dtype=torch.int64))
        builder.end_document()
    builder.finalize(str(prefix) + ".idx")
    return str(prefix)


@pytest.fixture(scope="session")
def tiny_shard(tmp_path_factory, tokenizer, corpus_texts):
    """The corpus tokenised with eod appended, as an indexed shard prefix."""
    eod = tokenizer.eos_token_id
    docs = [tokenizer.encode(text) + [eod] for text in corpus_texts]
    return build_shard(tmp_path_factory.mktemp("shard") / "tiny_text_document", docs)
