"""Where commands read and write: `devices/`, `search/` and `models/` under a workspace folder.

The workspace is `--workspace DIR`, else `$MERINO_MOBILE_HOME`, else the current directory.
Reference cards, device profiles and the default search space also ship inside the package
(`merino_mobile/data/`, links to the repository's top-level folders), so a name such as `opt-350m`
or `host` resolves from any directory: first in the workspace, then in the shipped data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from merino_mobile.errors import UserError

BUILTIN = Path(__file__).resolve().parent / "data"
ENV = "MERINO_MOBILE_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, workspace: str | Path | None = None) -> Workspace:
        root = workspace or os.environ.get(ENV) or Path.cwd()
        return cls(Path(root).expanduser().resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def state(self) -> Path:
        """Private working state (profiling database, export cache): `.merino-mobile/`."""
        return self.root / ".merino-mobile"

    def find(self, kind: str, name: str, suffix: str) -> Path:
        """A file given as a path, or by name in the workspace, then in the shipped data.

        `kind` is "models", "devices" or "search"; `suffix` is ".json" or ".toml".
        """
        direct = Path(name).expanduser()
        if direct.is_file():
            return direct
        stem = name if name.endswith(suffix) else name + suffix
        for base in (self.root / kind, BUILTIN / kind):
            candidate = base / stem
            if candidate.is_file():
                return candidate
        known = sorted(self.names(kind, suffix))
        raise UserError(
            f"no {kind[:-1] if kind != 'search' else 'search space'} named {name!r} (looked for "
            f"{self.root / kind / stem} and the shipped {kind}); "
            f"known: {', '.join(known) or 'none'}"
        )

    def names(self, kind: str, suffix: str) -> set[str]:
        """Names of the files of one kind in the workspace and the shipped data."""
        out = set()
        for base in (self.root / kind, BUILTIN / kind):
            if base.is_dir():
                out |= {p.name[: -len(suffix)] for p in base.glob(f"*{suffix}")}
        return out
