"""Fixtures several test files share: a workspace holding a tiny search space, and the CLI run
in-process against it (tests/test_cli_design.py, tests/test_objectives.py); the warm runner of
the loopback phones (tests/test_adb.py, tests/test_verify_adb.py)."""

from types import SimpleNamespace

import pytest
from cli_runner import run as run_cli  # tests/cli_runner.py (pytest puts tests/ on sys.path)

TINY_SPACE = """
schema_version = 1
name = "tiny"
vocab = 256
context = 128
head_dim = 16
positions = "learned"
tied_head = true
embed_width = 0
max_blocks = 3
widths = [32, 48, 64, 96]
ffn_ratios = [1.0, 2.0, 4.0]
depth = [0, 3]
sharing = true
order = "non-decreasing"
"""


@pytest.fixture
def ws(tmp_path, monkeypatch):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "tiny.toml").write_text(TINY_SPACE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run(monkeypatch, capsys):
    """run(workspace, *args, ok=True): `merino-mobile ARGS --workspace WORKSPACE`, with
    .returncode, .stdout and .stderr; `ok` asserts that it succeeded."""

    def go(workspace, *args, ok=True):
        code, out, err = run_cli(monkeypatch, capsys, *args, "--workspace", str(workspace))
        if ok:
            assert code == 0, err
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return go


@pytest.fixture(scope="module")
def warm_runner():
    """One warm fake executor_runner for a module's loopback phones (tests/adbd): a run on the
    phone is then a fork, not a torch import. Call `wait_ready()` before timing anything."""
    from adbd import WarmRunner  # tests/adbd; imported here so other modules do not pay for it

    runner = WarmRunner()
    yield runner
    runner.stop()
