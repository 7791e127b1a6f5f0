"""A megatron-core ``IndexedDatasetBuilder`` whose index stays compact in memory.

The upstream builder keeps document sizes in Python lists (~36 bytes per document per list),
which is what makes Megatron-LM preprocessing run out of memory on large corpora. This subclass
stores them in typed arrays (4 + 8 bytes per document) and writes the ``.idx`` with numpy, byte
for byte what the upstream ``finalize`` writes (the tests compare both).

Writers build ``PREFIX.tmp<PID>.bin/.idx`` and rename them when finished (``commit_outputs``);
``remove_stale_temporaries`` deletes those a killed run left behind.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
from array import array
from pathlib import Path

import numpy as np

from megatron_bliss.errors import ConfigError, InputError
from megatron_bliss.utils.dirs import ensure_dir

logger = logging.getLogger(__name__)

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
logging.getLogger("megatron.core").setLevel(logging.WARNING)  # import-time INFO chatter
from megatron.core.datasets.indexed_dataset import (  # noqa: E402
    _INDEX_HEADER,
    DType,
    IndexedDatasetBuilder,
    _IndexReader,
)


class CompactIndexedDatasetBuilder(IndexedDatasetBuilder):
    """Same file format and API as the upstream builder, one sequence per document."""

    def __init__(self, bin_path: str, dtype=np.int32) -> None:
        super().__init__(bin_path, dtype=np.dtype(dtype).type)  # DType wants the scalar type
        self.sequence_lengths = array("i")
        self.document_indices = array("q", [0])

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many documents at once: their tokens back to back, and their lengths."""
        if len(lengths) == 0:
            return
        self.data_file.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        start = len(self.sequence_lengths)
        self.sequence_lengths.frombytes(np.asarray(lengths, dtype=np.int32).tobytes())
        ends = np.arange(start + 1, start + len(lengths) + 1, dtype=np.int64)
        self.document_indices.frombytes(ends.tobytes())

    def add_index(self, path_prefix: str) -> None:
        """Append a whole finished dataset (its ``.bin`` is copied in chunks)."""
        index = _IndexReader(path_prefix + ".idx", multimodal=False)
        if np.dtype(index.dtype) != np.dtype(self.dtype):
            raise InputError(
                f"{path_prefix}: token dtype {np.dtype(index.dtype)} differs from "
                f"{np.dtype(self.dtype)} of the datasets merged before it"
            )
        offset = len(self.sequence_lengths)
        self.sequence_lengths.frombytes(np.asarray(index.sequence_lengths, np.int32).tobytes())
        shifted = np.asarray(index.document_indices, dtype=np.int64)[1:] + offset
        self.document_indices.frombytes(shifted.tobytes())
        del index
        with open(path_prefix + ".bin", "rb") as source:
            while chunk := source.read(1 << 24):
                self.data_file.write(chunk)

    def finalize(self, idx_path: str) -> None:
        self.data_file.flush()
        os.fsync(self.data_file.fileno())
        self.data_file.close()
        lengths = np.frombuffer(self.sequence_lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= DType.size(self.dtype)
        with open(idx_path, "wb") as handle:
            handle.write(_INDEX_HEADER)
            handle.write(struct.pack("<Q", 1))
            handle.write(struct.pack("<B", DType.code_from_dtype(self.dtype)))
            handle.write(struct.pack("<Q", len(lengths)))
            handle.write(struct.pack("<Q", len(self.document_indices)))
            handle.write(lengths.tobytes())
            handle.write(pointers.tobytes())
            handle.write(np.frombuffer(self.document_indices, dtype=np.int64).tobytes())
            handle.flush()
            os.fsync(handle.fileno())


def commit_outputs(temporary_prefix: str, final_prefix: str) -> None:
    """Rename a finished ``.bin`` then ``.idx`` onto their final names (``.idx`` last)."""
    os.replace(temporary_prefix + ".bin", final_prefix + ".bin")
    os.replace(temporary_prefix + ".idx", final_prefix + ".idx")


def remove_outputs(prefix: str) -> None:
    for suffix in (".bin", ".idx"):
        if os.path.exists(prefix + suffix):
            os.remove(prefix + suffix)


TEMPORARY_SUFFIX = re.compile(r"\.tmp(\d+)\.(bin|idx)")


def remove_stale_temporaries(final: str) -> None:
    """Delete ``FINAL.tmp<PID>.bin/.idx`` left by runs that were killed (kill -9 runs no cleanup):
    those whose process no longer exists on this machine. A live PID's files are another run's."""
    name = Path(final).name
    for path in Path(final).parent.glob(name + ".tmp*"):
        match = TEMPORARY_SUFFIX.fullmatch(path.name[len(name) :])
        if match and not _alive(int(match.group(1))):
            logger.info("removing %s (left by process %s, which has ended)", path, match.group(1))
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def make_output_parent(prefix: str) -> None:
    """Create the folder an output prefix lives in; a path through a file is one clear line."""
    parent = Path(prefix).parent
    try:
        ensure_dir(parent)
    except ValueError:
        raise ConfigError(
            f"{prefix}: cannot create output folder {parent} (a file is in the way)"
        ) from None
