"""Test peer for the ADB path: a loopback adbd standing for a phone this machine does not have.

`LoopbackAdbd` speaks the ADB wire protocol on 127.0.0.1; `PhoneSandbox` is the phone's
filesystem; `executor_runner.py` is a host program with the flags and output of ExecuTorch's
executor_runner that really executes the .pte with ExecuTorch's runtime; `llama_bench.py` one with
the flags and JSON of llama.cpp's llama-bench that runs the .gguf with llama-cpp-python;
`WarmRunner` keeps one executor_runner process warm so a run costs a fork, not a torch import.
"""

from .sandbox import PhoneSandbox
from .server import RUNNER, LoopbackAdbd, WarmRunner

__all__ = ["RUNNER", "LoopbackAdbd", "PhoneSandbox", "WarmRunner"]
