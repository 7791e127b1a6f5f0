"""The errors a person running a command can fix, and nothing else.

``megatron-bliss`` turns a ``UserError`` into one line, ``megatron-bliss CMD: error: MESSAGE``,
and exit code 2 (``exit_codes.BAD_INPUT``); every other exception keeps its traceback and exits 1,
so a broken internal invariant is never mistaken for a typo in a config. Raise a ``UserError``
subclass for bad input, a bad config, or a file that is missing or refused, with a message that
names the file, line or key.

The subclasses also derive from the built-in exception they replace (``ValueError``,
``FileNotFoundError``), so Python callers that caught those keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message is one line naming what is wrong and where."""


class ConfigError(UserError, ValueError):
    """A configuration (YAML, override, command-line value) that cannot run."""


class InputError(UserError, ValueError):
    """Input data or a file's contents that cannot be used (bad JSON line, wrong tokenizer...)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command needs does not exist."""
