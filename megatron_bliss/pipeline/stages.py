"""Stage bookkeeping: a stage is done when its marker exists with the same config hash.

Markers live in ``ROUND_DIR/stages/NAME.json``. A marker made under a different config stops the
run with one line instead of silently mixing outputs of two configs in one run directory.
Hashes chain: each stage's hash includes the hashes of the stages it consumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from megatron_bliss.config import ConfigError, config_hash
from megatron_bliss.utils.io import atomic_write_json


class StageMarker:
    def __init__(self, round_dir: Path, name: str, inputs: dict[str, Any]):
        self.path = round_dir / "stages" / f"{name}.json"
        self.name = name
        self.hash = config_hash(inputs)

    def done(self) -> bool:
        """True when finished under this config; raises when finished under another one."""
        if not self.path.exists():
            return False
        recorded = json.loads(self.path.read_text())
        if recorded.get("hash") != self.hash:
            raise ConfigError(
                f"{self.path}: stage '{self.name}' was made by a different config "
                f"(hash {recorded.get('hash')} != {self.hash}); use a new run_dir or delete it"
            )
        return True

    def complete(self, result: dict[str, Any] | None = None) -> None:
        payload = {"stage": self.name, "hash": self.hash, "finished": time.time()}
        atomic_write_json(self.path, {**payload, "result": result or {}})

    def result(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()).get("result", {})
