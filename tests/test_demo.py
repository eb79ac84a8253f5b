"""`merino-mobile demo --reduced`: the whole loop on this host, end to end, with real parts
(profile of a tiny grid, exact design against the measured table, ExecuTorch deploy and bench)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)


@pytest.mark.slow
def test_reduced_demo_runs_the_whole_loop(monkeypatch, capsys, tmp_path):
    code, out, err = run(monkeypatch, capsys, "demo", "--reduced", "--workspace", str(tmp_path),
                         "--json")
    assert code == 0, err
    r = json.loads(out)  # stdout is the JSON object alone
    # not a terminal: the profile's progress comes as plain lines, on stderr beside --json
    assert re.search(r"^\[\d+/\d+\] .+ \(elapsed \d+:\d\d(, eta \d+:\d\d)?\)$", err, re.M), err
    assert r["reduced"] and r["compare"] is None
    # a measured table was written and used for the design and the prediction
    assert Path(r["lut"]) == tmp_path / "devices" / "host" / "lut-executorch-int8.json"
    card = json.loads(Path(r["card"]).read_text())
    assert card["vocab"] == 256 and card["meta"]["latency_table"]["device"] == "host"
    assert r["predicted_ms"] <= r["budget_ms"] * (1 + 1e-9)
    rep = r["deploy"]
    assert Path(r["report"]).is_file() and rep["format"] == "executorch" and rep["quant"] == "int8"
    assert rep["prediction"]["decode"]["predicted_ms"] > 0
    assert rep["decode_tokens_per_s"]["median"] > 0
    assert set(r["steps"]) == {"profile_s", "design_s", "deploy_s", "total_s"}



@pytest.mark.slow
def test_reduced_demo_on_the_mobilellm_space_designs_llama_style_layers(monkeypatch, capsys,
                                                                          tmp_path):
    """`demo --reduced --space mobilellm`: the whole loop on a tiny space of the MobileLLM
    space's kind of layer (RMSNorm, SwiGLU, rotary, grouped-query attention): its table measures
    that kind, the design has it, and the deploy predicts it from the table."""
    code, out, err = run(monkeypatch, capsys, "demo", "--reduced", "--space", "mobilellm",
                         "--workspace", str(tmp_path), "--json")
    assert code == 0, err
    r = json.loads(out)
    card = json.loads(Path(r["card"]).read_text())
    assert card["schema_version"] == 2 and card["norm"] == "rmsnorm"
    assert card["positions"] == "rope" and not card["bias"]
    assert {(b["ffn"], b["kv_heads"]) for b in card["blocks"]} == {("swiglu", 1)}
    assert r["predicted_ms"] <= r["budget_ms"] * (1 + 1e-9)
    assert r["deploy"]["prediction"]["decode"]["predicted_ms"] > 0


def test_demo_refuses_what_it_cannot_do(monkeypatch, capsys, tmp_path):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "mine.toml").write_text(
        (Path(__file__).parents[1] / "search" / "default.toml").read_text())
    cases = [(("--speedup", "0"), "--speedup must be a positive number"),
             (("--space", "mine"), "--space mine: no comparison card is known for it"),
             (("--space", "nowhere"), "nowhere")]
    for args, fragment in cases:
        code, _, err = run(monkeypatch, capsys, "demo", *args, "--workspace", str(tmp_path))
        assert code == 2 and fragment in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "devices").exists()  # refused before anything was measured
