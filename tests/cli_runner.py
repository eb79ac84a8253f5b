"""The `merino-mobile` console entry point run in-process, for tests that check its output."""

from __future__ import annotations

import sys

from merino_mobile.cli import main


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `merino-mobile ARGS...`; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["merino-mobile", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
