"""The Triton row kernels on CPU through triton's interpreter (``TRITON_INTERPRET=1``).

Skipped unless triton is installed and the interpreter was requested before import; the GPU
checks are in ``test_triton_gpu.py``.
"""

from __future__ import annotations

import os

import pytest

from megatron_bliss.kernels import HAS_TRITON
from tests.kernels.test_triton_gpu import check_cross_entropy_rows, check_kl_rows

pytestmark = pytest.mark.skipif(
    not (HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs triton with TRITON_INTERPRET=1",
)


def test_cross_entropy_rows_interpreted():
    check_cross_entropy_rows("cpu", vocab=300, rows=9, smoothing=0.1)


def test_kl_rows_interpreted():
    check_kl_rows("cpu", vocab=300, rows=9)
