"""Writing files so that a reader never sees half of one, and the one clock every record uses.

Everything the tool writes (cards, tables, reports, exports' metadata) goes through
`atomic_write_text`: the bytes land in a temporary file beside the target and are renamed over it,
so a crash or Ctrl-C leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from merino_mobile.errors import UserError


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary sibling and a rename."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the path of a file to write (or remove it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); what the tool writes is an ordinary file
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> Path:
    """`data` as indented JSON with a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def utc_now() -> str:
    """The current UTC time, to the second, in ISO 8601 (every record's `date`)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_facts(command: str, argv: list[str], started: float) -> dict[str, Any]:
    """The keys a benchmark's result ends with: the machine it ran on (its load at the end says
    whether it ran alone), its wall time since `started` (a `time.perf_counter()` reading) and the
    command line that reproduces the file."""
    return {"machine": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg()},
            "wall_s": round(time.perf_counter() - started, 1),
            "command": " ".join([command, *argv])}
