"""Test peer for the ADB path: a loopback adbd standing for a phone this machine does not have.

`LoopbackAdbd` speaks the ADB wire protocol on 127.0.0.1; `PhoneSandbox` is the phone's
filesystem; `executor_runner.py` is a host program with the flags and output of ExecuTorch's
executor_runner that really executes the .pte with executorch.runtime.
"""

from pathlib import Path

from .sandbox import PhoneSandbox
from .server import LoopbackAdbd

RUNNER = Path(__file__).with_name("executor_runner.py")

__all__ = ["RUNNER", "LoopbackAdbd", "PhoneSandbox"]
