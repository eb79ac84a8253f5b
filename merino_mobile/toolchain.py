"""The versions of the packages that shape an artifact, and quieting their chatter.

Both the profile (its program cache key and its table's fingerprint) and the exporters (each
export.json) record which toolchain built a program; they read it here, so the two never differ.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import warnings


def package_versions(pkgs: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each package ("none" when it is not installed)."""
    out = {}
    for pkg in pkgs:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "none"
    return out


def quiet_dependencies() -> None:
    """Hide the toolchain's own deprecation chatter (torch, torchao, ExecuTorch warn about their
    internals on every export), which buried the progress and results. MERINO_MOBILE_VERBOSE=1
    keeps it."""
    if os.environ.get("MERINO_MOBILE_VERBOSE"):
        return
    # torch configures its own loggers when it is imported, undoing a level set before that; its
    # TORCH_LOGS ("-torch": errors only) holds whenever torch is imported, here or in a spawned
    # export worker, which inherits it. A TORCH_LOGS the user set is kept.
    os.environ.setdefault("TORCH_LOGS", "-torch")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
    for name in ("torch", "torchao", "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
