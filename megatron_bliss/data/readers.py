"""Streaming corpus readers: JSON lines (plain, ``.gz``, ``.zst``) and Parquet, in bounded batches.

Inputs may be files, globs or directories (searched recursively, sorted). Nothing is parsed here
for JSON lines: raw lines travel to the workers, which parse and tokenise them, so the main process
only reads bytes. Parquet is read one record batch at a time (only the wanted columns).
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from megatron_bliss.errors import ConfigError, InputError, MissingFileError

JSON_SUFFIXES = (".jsonl", ".json")
COMPRESSION_SUFFIXES = ("", ".gz", ".zst")
PARQUET_SUFFIX = ".parquet"


@dataclass
class Batch:
    """A run of consecutive input records: raw JSON lines, or Parquet columns."""

    path: str
    first_line: int  # 1-based number of the first record in its file
    lines: list[str] | None = None
    columns: dict[str, list] | None = None
    num_bytes: int = 0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        if self.lines is not None:
            return len(self.lines)
        return len(next(iter(self.columns.values()))) if self.columns else 0


def is_supported(path: str | Path) -> bool:
    name = Path(path).name
    if name.endswith(PARQUET_SUFFIX):
        return True
    return any(name.endswith(s + c) for s in JSON_SUFFIXES for c in COMPRESSION_SUFFIXES)


def is_encodable(text: str) -> bool:
    """False for JSON ``\\ud800``-style lone surrogates, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_dataset_manifest(path: Path) -> bool:
    """``PREFIX.json`` beside ``PREFIX.idx``: the manifest of an indexed dataset, not a corpus
    (found when outputs are written into the input folder and the command runs again)."""
    return path.name.endswith(".json") and path.with_suffix(".idx").exists()


def expand_inputs(specs: list[str] | str) -> list[Path]:
    """Files named by paths, globs and directories, in a stable order (duplicates dropped)."""
    specs = [specs] if isinstance(specs, str | Path) else list(specs)
    found: list[Path] = []
    for spec in specs:
        spec = str(spec)
        if os.path.isdir(spec):
            matches = sorted(
                p
                for p in Path(spec).rglob("*")
                if p.is_file() and is_supported(p) and not is_dataset_manifest(p)
            )
            if not matches:
                raise MissingFileError(
                    f"{spec}: directory holds no .jsonl/.json(.gz/.zst)/.parquet"
                )
        elif os.path.isfile(spec):
            if not is_supported(spec):
                raise ConfigError(f"{spec}: unsupported input (.jsonl/.json(.gz/.zst) or .parquet)")
            matches = [Path(spec)]
        else:
            matches = sorted(
                Path(p)
                for p in glob.glob(spec, recursive=True)
                if is_supported(p) and not is_dataset_manifest(Path(p))
            )
            if not matches:
                raise MissingFileError(f"{spec}: no input file matches")
        found.extend(m for m in matches if m not in found)
    return found


def _open_binary(path: Path):
    """Decompressed bytes of a JSON-lines file; lines are decoded one at a time, so an invalid
    UTF-8 byte is reported on its own line."""
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(ZstdReader(path))
    return open(path, "rb")


class BadLine(str):
    """A line that could not be read as text, holding what is wrong with it: it travels with the
    batch like any line, so it stops the run as ``FILE:LINE: ...`` or is skipped and counted
    with ``--skip-bad-lines``, like a line of malformed JSON."""


def _decode(raw: bytes, line_number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return BadLine(
            f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line)"
        )
    return text[1:] if line_number == 1 and text.startswith("\ufeff") else text  # a BOM


class ZstdReader(io.RawIOBase):
    """Streams a (multi-frame) ``.zst`` file and, unlike ``stream_reader``, fails on truncation."""

    def __init__(self, path: Path, chunk_size: int = 1 << 20):
        import zstandard

        self._zstd = zstandard
        self._file = open(path, "rb")  # noqa: SIM115 (closed in close())
        self._chunk_size = chunk_size
        self._decoder = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._offset = 0  # bytes of _pending already returned
        self._started = False

    def readable(self) -> bool:
        return True

    def _refill(self) -> bool:
        """Decode more bytes into ``_pending``; False at a clean end of file."""
        while self._offset >= len(self._pending):
            self._pending, self._offset = b"", 0
            compressed = self._file.read(self._chunk_size)
            if not compressed:
                if self._started and not self._decoder.eof:
                    raise self._zstd.ZstdError("truncated zstd frame")
                return False
            pieces = []
            while compressed:
                if self._decoder.eof:  # next frame
                    self._decoder = self._zstd.ZstdDecompressor().decompressobj()
                self._started = True
                pieces.append(self._decoder.decompress(compressed))
                compressed = self._decoder.unused_data if self._decoder.eof else b""
            self._pending = b"".join(pieces)
        return True

    def readinto(self, buffer) -> int:
        if not self._refill():
            return 0
        size = min(len(buffer), len(self._pending) - self._offset)
        buffer[:size] = memoryview(self._pending)[self._offset : self._offset + size]
        self._offset += size
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def _archive_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error, UnicodeDecodeError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def iter_json_batches(path: Path, batch_lines: int, batch_bytes: int) -> Iterator[Batch]:
    """Raw lines in batches (bad UTF-8 as a ``BadLine``); a corrupt archive is one
    ``FILE:LINE`` error."""
    line_number = 0
    lines: list[str] = []
    size = 0
    try:
        with _open_binary(path) as handle:
            for raw in handle:
                line_number += 1
                line = _decode(raw, line_number)
                lines.append(line)
                size += len(line)
                if len(lines) >= batch_lines or size >= batch_bytes:
                    yield Batch(
                        str(path), line_number - len(lines) + 1, lines=lines, num_bytes=size
                    )
                    lines, size = [], 0
    except _archive_errors() as error:
        what = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"{path}:{line_number + 1}: cannot read (corrupt or truncated file: {what})"
        ) from None
    if lines:
        yield Batch(str(path), line_number - len(lines) + 1, lines=lines, num_bytes=size)


def iter_parquet_batches(path: Path, keys: list[str], batch_rows: int) -> Iterator[Batch]:
    """Only the wanted columns, one record batch at a time."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise InputError(f"{path}:1: cannot read Parquet ({error})") from None
    missing = [key for key in keys if key not in parquet.schema_arrow.names]
    if missing:
        raise InputError(f"{path}:1: missing column '{missing[0]}'")
    row = 1
    for record_batch in parquet.iter_batches(batch_size=batch_rows, columns=keys):
        columns = {key: record_batch.column(key).to_pylist() for key in keys}
        size = sum(len(t) for values in columns.values() for t in values if isinstance(t, str))
        yield Batch(str(path), row, columns=columns, num_bytes=size)
        row += record_batch.num_rows


def iter_batches(
    paths: list[Path], keys: list[str], batch_lines: int = 1024, batch_bytes: int = 1 << 22
) -> Iterator[Batch]:
    """Every input file in order, as batches of at most ``batch_lines`` records."""
    for path in paths:
        if path.name.endswith(PARQUET_SUFFIX):
            yield from iter_parquet_batches(path, keys, batch_lines)
        else:
            yield from iter_json_batches(path, batch_lines, batch_bytes)
