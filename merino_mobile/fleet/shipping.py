"""Programs as bytes: what travels between the driver's program cache and the fleet's nodes.

A profile's program is one file (a .pte) or a folder of files (an ONNX program, one .onnx per
method; `merino_mobile.latency.programs`). `ProgramFiles` holds one in memory, with a digest of
its content; `write` puts it under a folder atomically (a temporary sibling renamed into place,
so a killed writer never leaves half a program where a reader looks, and two writers of one
program both end with the same whole one).

`NodeCache` is a node's content-addressed shelf of the programs shipped to it, `<digest>/<name>`:
every device actor of a node looks there before asking the driver for the bytes, so a program is
shipped once per node, however many of its devices time it, and again only when the shelf is
cleared. Its folder is `$MERINO_MOBILE_FLEET_CACHE` on the node, else
`~/.cache/merino-mobile/fleet`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "MERINO_MOBILE_FLEET_CACHE"


def default_node_cache() -> Path:
    """This node's shelf of shipped and exported programs."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "merino-mobile" / "fleet"


@dataclass(frozen=True)
class ProgramFiles:
    """A program's bytes: `files` by name inside the folder `name`, or {name: bytes} for a
    single-file program (`folder` False)."""

    name: str
    files: dict[str, bytes]
    folder: bool

    @classmethod
    def read(cls, path: Path) -> ProgramFiles:
        path = Path(path)
        if path.is_dir():
            return cls(path.name, {f.name: f.read_bytes() for f in sorted(path.iterdir())
                                   if f.is_file()}, True)
        return cls(path.name, {path.name: path.read_bytes()}, False)

    @property
    def digest(self) -> str:
        """A hash of the content (names and bytes): equal programs, equal digests."""
        h = hashlib.sha256(self.name.encode() + (b"/" if self.folder else b""))
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return h.hexdigest()[:32]

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())

    def write(self, parent: Path, name: str | None = None) -> Path:
        """The program at `parent / (name or self.name)`, written unless it is there already."""
        target = Path(parent) / (name or self.name)
        if target.exists():
            return target
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{target.name}.partial-{os.getpid()}-{threading.get_ident()}"
        try:
            if self.folder:
                tmp.mkdir()
                for fname, data in self.files.items():
                    (tmp / Path(fname).name).write_bytes(data)
            else:
                tmp.write_bytes(next(iter(self.files.values())))
            if self.folder and target.exists():  # another writer finished it first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            raise
        return target


class NodeCache:
    """A node's programs by digest (see the module docstring)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_node_cache()

    def path(self, digest: str, name: str) -> Path:
        return self.root / "programs" / digest / name

    def has(self, digest: str, name: str) -> bool:
        return self.path(digest, name).exists()

    def put(self, digest: str, program: ProgramFiles) -> Path:
        return program.write(self.root / "programs" / digest)

    @property
    def exports(self) -> Path:
        """Where export tasks of this node build programs before sending them back."""
        return self.root / "exports"
