"""Fixtures for the data tests: a corpus with an empty document, and a reference writer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_bliss.data.preprocess import PreprocessOptions, run_preprocess
from megatron_bliss.data.tokenizer import TokenizerSpec


@pytest.fixture(scope="session")
def docs(corpus_texts) -> list[str]:
    """The shared corpus with an empty document and whitespace-only text mixed in."""
    texts = list(corpus_texts[:60])
    texts.insert(5, "")
    texts.insert(9, "   \n ")
    return texts


def write_jsonl(path, texts, key="text"):
    with open(path, "w") as handle:
        for text in texts:
            handle.write(json.dumps({key: text, "id": len(text)}) + "\n")
    return path


def reference_bytes(tokenizer, texts, tmp_path, eod=True) -> tuple[bytes, bytes]:
    """The contract's reference: encode one document at a time, add_item with the builder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_bliss.data.tokenizer import token_dtype

    prefix = str(tmp_path / "reference")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=token_dtype(tokenizer).type)
    for text in texts:
        if text == "":
            continue
        ids = tokenizer.encode(text, add_special_tokens=False)
        ids = ids + [tokenizer.eos_token_id] if eod else ids
        builder.add_item(torch.tensor(ids, dtype=torch.int64))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return read_bytes(prefix)


def read_bytes(prefix) -> tuple[bytes, bytes]:
    with open(str(prefix) + ".bin", "rb") as b, open(str(prefix) + ".idx", "rb") as i:
        return b.read(), i.read()


def preprocess(inputs, prefix, tokenizer_dir, **kwargs):
    options = PreprocessOptions(
        inputs=[str(p) for p in inputs] if isinstance(inputs, list) else [str(inputs)],
        output_prefix=str(prefix),
        tokenizer=kwargs.pop("spec", TokenizerSpec(name=str(tokenizer_dir))),
        append_eod=kwargs.pop("append_eod", True),
        progress=False,
        **kwargs,
    )
    return run_preprocess(options)


def documents_of(prefix) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    return [np.array(dataset[i]) for i in range(len(dataset))]
