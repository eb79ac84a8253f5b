"""Bad paths a user gives the CLI: one clear line with exit code 2, nothing left behind."""

from __future__ import annotations

from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)


def test_design_out_on_a_folder_is_refused_and_leaves_nothing(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "dd"
    folder.mkdir()
    code, out, err = run(monkeypatch, capsys, "design", "--params", "20M", "--out", str(folder),
                         "--force", "--workspace", str(tmp_path))
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "is a folder" in err and "Traceback" not in err + out
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd"]  # no temporary file left


def test_written_files_are_ordinary_files_not_private(tmp_path):
    import os
    import stat

    from merino_mobile.files import atomic_write_text

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "card.json", "{}\n")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "{}\n"
