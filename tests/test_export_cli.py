"""`merino-mobile export`: the command end to end, its JSON, and its one-line refusals."""

from __future__ import annotations

import json

import pytest
from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)
from safetensors.torch import save_file

from merino_mobile.card import Block, Card, save_card
from merino_mobile.model import build_decoder

TINY = Card(name="tiny-cli", vocab=256, context=16, head_dim=16, blocks=(Block(64, 2.0, 4, 1),))


@pytest.fixture
def workspace(tmp_path):
    save_card(TINY, tmp_path / "models" / "tiny-cli.json")
    return tmp_path


@pytest.mark.slow
def test_existing_folder_refused_then_replaced_with_force(workspace, monkeypatch, capsys):
    ws = ["--workspace", str(workspace)]
    folder = workspace / "build" / "tiny-cli" / "executorch-int8"  # the default --out
    folder.mkdir(parents=True)
    (folder / "stale.txt").write_text("from an older export")
    code, out, err = run(monkeypatch, capsys, "export", "tiny-cli", "--format", "executorch",
                         "--quant", "int8", *ws)
    assert code == 2 and "exists; choose another --out or pass --force" in err
    assert "Traceback" not in err and (folder / "stale.txt").exists()

    code, out, err = run(monkeypatch, capsys, "export", "tiny-cli", "--format", "executorch",
                         "--quant", "int8", "--force", "--json", *ws)
    assert code == 0, err
    result = json.loads(out)
    assert result["schema_version"] == 1 and result["artifact"] == str(folder / "model.pte")
    v = result["verification"]
    assert v["passed"] and v["cosine_min"] >= 0.99 and v["runtime"] == "executorch"
    assert result["size_bytes"] == (folder / "model.pte").stat().st_size
    assert json.loads((folder / "export.json").read_text()) == result
    assert json.loads((folder / "card.json").read_text())["name"] == "tiny-cli"
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in folder.parent.iterdir()] == ["executorch-int8"]  # no temp left


def test_unsupported_pair_is_one_line(workspace, monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "export", "tiny-cli", "--format", "coreml",
                       "--quant", "fp32", "--workspace", str(workspace))
    assert code == 2
    assert "coreml does not support quantization 'fp32'" in err and "Traceback" not in err
    assert not (workspace / "build").exists()


def test_inconsistent_card_is_refused(workspace, monkeypatch, capsys):
    bad = TINY.to_json()
    bad["blocks"][0]["width"] = 72  # not a multiple of head_dim 16
    (workspace / "bad.json").write_text(json.dumps(bad))
    code, _, err = run(monkeypatch, capsys, "export", str(workspace / "bad.json"), "--format",
                       "executorch", "--quant", "fp32", "--workspace", str(workspace))
    assert code == 2 and "width 72 is not a multiple of head_dim 16" in err
    bad["blocks"][0] |= {"width": 64, "depth": 0}
    (workspace / "bad.json").write_text(json.dumps(bad))
    code, _, err = run(monkeypatch, capsys, "export", str(workspace / "bad.json"), "--format",
                       "executorch", "--quant", "fp32", "--workspace", str(workspace))
    assert code == 2 and "depth 0" in err


def test_mismatched_checkpoint_names_the_tensor(workspace, monkeypatch, capsys):
    wider = build_decoder(Card(name="x", vocab=256, context=16, head_dim=16,
                               blocks=(Block(64, 4.0, 4, 1),)))
    ckpt = workspace / "w.safetensors"
    save_file({k: v.contiguous() for k, v in wider.state_dict().items()}, str(ckpt))
    code, _, err = run(monkeypatch, capsys, "export", "tiny-cli", "--format", "executorch",
                       "--quant", "fp32", "--checkpoint", str(ckpt),
                       "--workspace", str(workspace))
    assert code == 2
    assert "'blocks.0.layers.0.ffn.up.weight' expected shape [128, 64], found [256, 64]" in err
    assert not (workspace / "build" / "tiny-cli").exists()


def test_export_table_shows_the_verdict():
    from pathlib import Path

    from rich.console import Console

    from merino_mobile.cli import export_table
    from merino_mobile.export import ExportResult

    result = ExportResult("executorch", "int4", Path("out/model.pte"), 2_500_000, 12.34,
                          {"passed": False, "max_rel_err": 0.2, "cosine_min": 0.91,
                           "greedy_agreement": 0.5, "criterion": "cosine_min >= 0.95"},
                          card="tiny")
    console = Console(width=120, record=True)
    console.print(export_table(result))
    text = console.export_text()
    assert "tiny -> executorch int4" in text and "FAILED cosine_min >= 0.95" in text
    assert "0.91" in text and "12.3 s" in text and "out/model.pte" in text
