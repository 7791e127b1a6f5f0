"""How every ``megatron-bliss`` command ends, for shells, SLURM scripts and the pipeline.

- ``0``: finished.
- ``2``: bad input or a refused file (one line on stderr, nothing half-written).
- ``75`` (``INTERRUPTED``, sysexits' ``EX_TEMPFAIL``: "temporary failure, try again later"):
  stopped by SIGTERM/SIGUSR1 after saving a checkpoint. Nothing is recorded as finished; running
  the same command again continues from that checkpoint, so requeue scripts key on this code.
- ``1``: anything else (a traceback). ``torchrun`` also reports ``1`` whenever a rank ends
  non-zero, so behind torchrun an interruption reads as 1; ``RUN_DIR/summary.json`` then says
  ``"interrupted": true``.
"""

from __future__ import annotations

FINISHED = 0
FAILED = 1
BAD_INPUT = 2
INTERRUPTED = 75


class Interrupted(RuntimeError):
    """A stage stopped early on a signal after saving a checkpoint; the command exits with
    ``INTERRUPTED`` and the message (one line) says how to continue."""
