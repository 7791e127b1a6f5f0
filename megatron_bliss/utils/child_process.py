"""Child processes that end with their parent (the pipeline's torchrun stages).

``run_child`` passes SIGTERM and SIGUSR1 received by this process on to the child as SIGTERM
(torchrun forwards SIGTERM to its ranks, which checkpoint and stop; SIGUSR1 would kill torchrun
itself without telling them), and starts the child through this module's ``__main__``, which
asks Linux to send the child SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, kept across
``exec``): a parent killed even with SIGKILL then leaves no ranks running. Elsewhere than Linux
only the forwarding applies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

logger = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
PR_SET_PDEATHSIG = 1


def run_child(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` to its end and return its exit code (negative: killed by that signal)."""
    wrapped = [sys.executable, "-m", __name__, str(os.getpid()), *command]
    child = subprocess.Popen(wrapped, env=env)
    with _forwarding(child):
        return child.wait()


@contextlib.contextmanager
def _forwarding(child: subprocess.Popen) -> Iterator[None]:
    def forward(signum, frame) -> None:
        logger.warning("received signal %d: stopping the child process %d", signum, child.pid)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    previous = {}
    try:
        for signum in FORWARDED:
            previous[signum] = signal.signal(signum, forward)
    except ValueError:  # not the main thread: signals cannot be caught here
        logger.debug("signals not forwarded to %d (not the main thread)", child.pid)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exec_dying_with_parent(parent: int, command: list[str]) -> None:
    """Become ``command``, set to receive SIGTERM when process ``parent`` ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            sys.exit(128 + signal.SIGTERM)
    os.execvp(command[0], command)


if __name__ == "__main__":
    _exec_dying_with_parent(int(sys.argv[1]), sys.argv[2:])
