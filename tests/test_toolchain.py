"""The toolchain's chatter is quieted for the whole process, torch's own loggers included."""

from __future__ import annotations

import os
import subprocess
import sys

# torch is imported after quiet_dependencies, as the CLI does, then one of its loggers warns
PROBE = """
from merino_mobile.toolchain import quiet_dependencies
quiet_dependencies()
import logging
import torch
logging.getLogger("torch.utils._pytree").warning("probe-warning")
"""


def _stderr(env: dict[str, str]) -> str:
    base = {k: v for k, v in os.environ.items()
            if k not in ("TORCH_LOGS", "MERINO_MOBILE_VERBOSE")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=base | env, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stderr


def test_a_torch_logger_warning_is_hidden_even_when_torch_is_imported_afterwards() -> None:
    assert "probe-warning" not in _stderr({})


def test_verbose_keeps_the_chatter() -> None:
    assert "probe-warning" in _stderr({"MERINO_MOBILE_VERBOSE": "1"})


def test_a_torch_logs_setting_of_the_users_is_kept() -> None:
    # "+torch": torch's loggers at DEBUG, so the warning shows although the rest is quieted
    assert "probe-warning" in _stderr({"TORCH_LOGS": "+torch"})
