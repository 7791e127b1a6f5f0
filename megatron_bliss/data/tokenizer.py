"""Tokenizer loading for the whole project, and the end-of-document / dtype rules of docs/formats.md.

``load_tokenizer`` turns any accepted spec into a Hugging Face tokenizer: a tokenizer directory or
hub name, a ``tokenizers``-format ``*.json`` file, a sentencepiece ``*.model`` file (loaded as a
Llama tokenizer), or Megatron's ``GPT2BPETokenizer`` vocab/merges pair.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_bliss.errors import ConfigError, InputError, MissingFileError

EOD_CANDIDATES = ("<|endoftext|>", "</s>")
# Files that make a folder a tokenizer (a saved Hugging Face tokenizer, or a sentencepiece model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def holds_tokenizer(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


UINT16_LIMIT = 65500  # docs/formats.md: uint16 tokens when len(tokenizer) < 65500


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to load a tokenizer again (in a worker process, say)."""

    name: str | None = None  # directory, hub name, *.json or *.model
    tokenizer_type: str | None = None  # Megatron: HuggingFaceTokenizer | GPT2BPETokenizer
    vocab_file: str | None = None
    merge_file: str | None = None

    def describe(self) -> str:
        if self.tokenizer_type == "GPT2BPETokenizer":
            return f"GPT2BPETokenizer({self.vocab_file}, {self.merge_file})"
        return str(self.name)


def spec_from_args(args) -> TokenizerSpec:
    """The spec named by ``--tokenizer`` or Megatron's ``--tokenizer-type/-model/--vocab-file``."""
    name = getattr(args, "tokenizer", None) or getattr(args, "tokenizer_model", None)
    return TokenizerSpec(
        name=name,
        tokenizer_type=getattr(args, "tokenizer_type", None),
        vocab_file=getattr(args, "vocab_file", None),
        merge_file=getattr(args, "merge_file", None),
    )


def _quiet_transformers():
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _set_default_eos(tokenizer) -> None:
    """A bare ``tokenizers`` file declares no eos: adopt the first standard one it contains."""
    if tokenizer.eos_token is not None:
        return
    vocab = tokenizer.get_vocab()
    for candidate in EOD_CANDIDATES:
        if candidate in vocab:
            tokenizer.eos_token = candidate
            return


def _load_json_file(path: Path):
    transformers = _quiet_transformers()
    json.loads(path.read_text())  # a clear error for a file that is not JSON at all
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    _set_default_eos(tokenizer)
    return tokenizer


class SentencePieceTokenizer:
    """A sentencepiece ``*.model`` behind the slice of the Hugging Face API the project uses.

    Encoding goes through the sentencepiece library itself: the HF Llama conversion of a
    sentencepiece BPE model merges differently on some inputs, so it is not "the tokenizer's own
    ids". ``save_pretrained`` still writes a directory ``AutoTokenizer`` loads (the conversion).
    """

    is_fast = False

    def __init__(self, model_file: str | Path):
        import sentencepiece

        self.model_file = str(model_file)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=self.model_file)
        self.bos_token_id = self._special(self.sp.bos_id())
        self.eos_token_id = self._special(self.sp.eos_id())
        self.pad_token_id = self._special(self.sp.pad_id())
        self.unk_token_id = self._special(self.sp.unk_id())
        self.bos_token = self._piece(self.bos_token_id)
        self.eos_token = self._piece(self.eos_token_id)
        self.pad_token = self._piece(self.pad_token_id)

    @staticmethod
    def _special(value: int) -> int | None:
        return value if value >= 0 else None

    def _piece(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.sp.id_to_piece(token_id)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(len(self))}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_token_id, *ids] if add_special_tokens and self.bos_token_id else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=1)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.sp.decode([int(i) for i in ids])

    def save_pretrained(self, folder: str | Path) -> None:
        transformers = _quiet_transformers()
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(self.model_file, Path(folder) / "tokenizer.model")
        transformers.LlamaTokenizer.from_pretrained(folder).save_pretrained(folder)


def _load_sentencepiece(path: Path):
    return SentencePieceTokenizer(path)


def _load_gpt2_bpe(vocab_file: str | None, merge_file: str | None):
    if not vocab_file or not merge_file:
        raise ConfigError("GPT2BPETokenizer needs --vocab-file and --merge-file")
    for path in (vocab_file, merge_file):
        if not Path(path).exists():
            raise MissingFileError(f"{path}: tokenizer file not found")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    transformers = _quiet_transformers()
    # GPT-2's byte-level BPE, built directly (GPT2TokenizerFast(vocab_file=...) in transformers 5
    # silently ignores the files).
    backend = Tokenizer(models.BPE.from_file(vocab_file, merge_file))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    _set_default_eos(tokenizer)
    return tokenizer


def _load(spec: TokenizerSpec):
    if spec.tokenizer_type == "GPT2BPETokenizer":
        return _load_gpt2_bpe(spec.vocab_file, spec.merge_file)
    if spec.tokenizer_type not in (None, "HuggingFaceTokenizer"):
        raise ConfigError(
            f"--tokenizer-type {spec.tokenizer_type} is not supported "
            "(HuggingFaceTokenizer or GPT2BPETokenizer)"
        )
    if not spec.name:
        raise ConfigError("no tokenizer given (--tokenizer or --tokenizer-model)")
    path = Path(spec.name)
    if path.is_file() and path.suffix == ".json":
        return _load_json_file(path)
    if path.is_file() and path.suffix == ".model":
        return _load_sentencepiece(path)
    if path.is_file():
        raise ConfigError(f"{path}: not a tokenizer (expected a directory, *.json or *.model)")
    if not path.exists() and (
        path.suffix in (".json", ".model") or spec.name.startswith((".", "/"))
    ):
        raise MissingFileError(f"{path}: tokenizer not found")  # a path, not a hub name
    transformers = _quiet_transformers()
    return transformers.AutoTokenizer.from_pretrained(spec.name)


def load_tokenizer(spec: str | TokenizerSpec):
    """A Hugging Face tokenizer for ``spec``; any failure becomes one line naming the spec."""
    spec = TokenizerSpec(name=str(spec)) if not isinstance(spec, TokenizerSpec) else spec
    if not spec.name and spec.tokenizer_type != "GPT2BPETokenizer":
        raise ConfigError(
            "no tokenizer given (--tokenizer, or --tokenizer-model with --tokenizer-type)"
        )
    try:
        return _load(spec)
    except (FileNotFoundError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if spec.describe() in message:  # already one line naming the tokenizer
            missing = isinstance(error, FileNotFoundError)
            raise (MissingFileError if missing else InputError)(message) from None
        raise InputError(f"{spec.describe()}: cannot load tokenizer ({message})") from None
    except Exception as error:  # tokenizers/transformers raise many types for a broken file
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{spec.describe()}: cannot load tokenizer ({message})") from None


def resolve_eod_id(tokenizer, override: str | int | None = None) -> int:
    """docs/formats.md: eos token, else ``<|endoftext|>``, else ``</s>``, else error; override wins."""
    vocab = tokenizer.get_vocab()
    if override is not None:
        if isinstance(override, int) or str(override).isdigit():
            if int(override) >= len(tokenizer):
                raise ConfigError(f"--eod-token {override} is outside the vocabulary")
            return int(override)
        if override not in vocab:
            raise ConfigError(f"--eod-token {override!r} is not a token of the tokenizer")
        return int(vocab[override])
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    for candidate in EOD_CANDIDATES:
        if candidate in vocab:
            return int(vocab[candidate])
    raise ConfigError(
        "tokenizer has no eos token, '<|endoftext|>' or '</s>': give one with --eod-token"
    )


def token_dtype(tokenizer) -> np.dtype:
    """uint16 if the vocabulary (added tokens included) has fewer than 65500 ids, else int32."""
    return np.dtype(np.uint16) if len(tokenizer) < UINT16_LIMIT else np.dtype(np.int32)


def tokenizer_hash(tokenizer) -> str:
    """A sha256 of the tokenizer's full definition, for manifests."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    elif isinstance(tokenizer, SentencePieceTokenizer):
        digest.update(Path(tokenizer.model_file).read_bytes())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([tokenizer.eos_token, tokenizer.bos_token, len(tokenizer)]).encode())
    return digest.hexdigest()


def check_dataset_tokenizer(prefix: str, tokenizer, name: str) -> None:
    """Stop when the manifest beside a dataset says another tokenizer made it: its ids would be
    trained (and exported) as if they were this tokenizer's. The hash of the full definition
    decides; when it differs, the recorded tokenizer is loaded if it can be, and the same
    vocabulary and end-of-document token pass (one tokenizer read from a directory and from its
    JSON file can hash differently). Datasets without a manifest cannot be checked."""
    manifest = Path(prefix + ".json")
    try:
        record = json.loads(manifest.read_text())
        recorded = record.get("tokenizer_hash")
    except (OSError, ValueError, AttributeError):
        return
    if not recorded or recorded == tokenizer_hash(tokenizer):
        return
    made_with = record.get("tokenizer") or recorded[:12]
    if _same_vocabulary(made_with, tokenizer):
        return
    raise InputError(
        f"{manifest}: {prefix} was tokenized with {made_with} ({record.get('vocab_size')} "
        f"tokens), not with data.tokenizer={name} ({len(tokenizer)} tokens, another vocabulary); "
        "pass the dataset's tokenizer or re-tokenize the data"
    )


def _same_vocabulary(recorded: str, tokenizer) -> bool:
    try:
        other = load_tokenizer(recorded)
    except Exception:  # gone, or a hub name offline: the hashes alone decide
        return False
    return other.get_vocab() == tokenizer.get_vocab() and other.eos_token == tokenizer.eos_token


class DocumentEncoder:
    """Encodes batches of texts to token ids exactly like ``tokenizer.encode`` one at a time.

    Fast tokenizers go through the Rust backend's batch encoder (the expensive part of
    preprocessing); the ids are the same as ``encode(text, add_special_tokens=False)``.
    """

    def __init__(self, tokenizer, append_eod: bool, eod_id: int | None, bos_id: int | None):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.prefix = [bos_id] if bos_id is not None else []
        self.suffix = [eod_id] if append_eod else []

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            ids = self.tokenizer.encode_batch(texts)
        elif self.backend is not None:
            encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
            ids = [encoding.ids for encoding in encodings]
        else:
            ids = [self.tokenizer.encode(text, add_special_tokens=False) for text in texts]
        if self.prefix or self.suffix:
            ids = [self.prefix + one + self.suffix for one in ids]
        return ids


def bos_id_or_error(tokenizer) -> int:
    if tokenizer.bos_token_id is None:
        raise ConfigError("--add-bos: the tokenizer has no bos token")
    return int(tokenizer.bos_token_id)
