"""Is the Hugging Face hub there? Asked once, quickly, so offline cluster nodes do not wait on
the hub client's retries (about 25 s per request) before falling back to local data."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_offline() -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes") for name in OFFLINE_VARIABLES
    )


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False in offline mode or when the hub (``HF_ENDPOINT`` when set) does not accept a TCP
    connection within ``timeout_s``."""
    if hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
