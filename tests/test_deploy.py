"""`merino-mobile deploy` and `compare`: real exports run on this host, reports on disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)

from merino_mobile import accounting
from merino_mobile.card import Block, Card, save_card
from merino_mobile.cli import main
from merino_mobile.device.base import Fingerprint
from merino_mobile.device.host import HostDevice
from merino_mobile.device.profiles import load_profile
from merino_mobile.latency.store import Point
from merino_mobile.latency.table import Lut, lut_path
from merino_mobile.workspace import Workspace

A = Card(name="tiny-a", vocab=256, context=32, head_dim=16, blocks=(Block(64, 2.0, 4, 1),))
B = Card(name="tiny-b", vocab=256, context=32, head_dim=16, blocks=(Block(64, 2.0, 4, 2),))
FAST = ("--prompt", "8", "--generate", "8", "--repeat", "2")


def table_for(ws: Workspace, runtime: str, quant: str, vocab: int, ms: float = 0.05) -> Lut:
    """A latency table with this host's fingerprint and hand-set terms: it stands in for a
    profile run (tested in test_profile.py), so that the prediction arithmetic is checkable."""
    fp = HostDevice(load_profile(ws, "host")).fingerprint(runtime, quant)
    fp = Fingerprint(**{**fp.__dict__, "date": ""})
    layer = [(Point("layer", ph, width=64, ffn_ratio=2.0, heads=4, context=c), ms * (c / 8))
             for ph, cs in (("decode", (8, 16)), ("prefill", (8,))) for c in cs]
    entries = {
        "fixed": {"decode": [(Point("fixed", "decode", context=c), ms) for c in (8, 16)]},
        "layer": {"decode": layer[:2], "prefill": layer[2:]},
        "embedding": {"decode": [(Point("embedding", "decode", width=64, vocab=4096,
                                        context=1), ms / 10)]},
        "head": {"decode": [(Point("head", "decode", width=64, vocab=vocab), ms)]},
    }
    lut = Lut("host", runtime, quant, fp, entries)
    lut.save(lut_path(ws.devices, "host", runtime, quant))
    return lut


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    for card in (A, B):
        save_card(card, root / "models" / f"{card.name}.json")
    return root


@pytest.fixture(scope="module")
def deployed(workspace) -> dict:
    """tiny-b deployed with ExecuTorch int8 against a table that covers decode 16, prefill 8."""
    table_for(Workspace(workspace), "executorch", "int8", vocab=256)
    mp = pytest.MonkeyPatch()
    code, out = _run_plain(mp, "deploy", "tiny-b", "--format", "executorch", *FAST,
                           "--workspace", str(workspace), "--json")
    mp.undo()
    assert code == 0, out
    return json.loads(out)


def _run_plain(mp, *args: str) -> tuple[int, str]:
    import contextlib
    import io

    mp.setattr(sys, "argv", ["merino-mobile", *args])
    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buf):
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, buf.getvalue()


@pytest.mark.slow
def test_deploy_report_has_every_field(deployed, workspace):
    r = deployed
    out = Path(r["out_dir"])
    assert out == workspace / "build" / "tiny-b" / "host-executorch-int8"
    for f in ("report.json", "report.md", "throughput.png", "latency.png", "artifact/model.pte",
              "artifact/card.json", "artifact/export.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(r))
    assert (r["format"], r["quant"], r["runtime"], r["device"]) == (
        "executorch", "int8", "executorch", "host")
    assert r["load_ms"] > 0 and r["peak_rss_bytes"] > 0 and r["size_bytes"] > 0
    for key in ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert 0 < r[key]["p10"] <= r[key]["median"] <= r[key]["p90"]
    assert r["fingerprint"]["cpu"] and r["fingerprint"]["runtime_version"]
    assert r["cache_len"] == 16 and r["card"]["params"] > 0
    # predicted vs measured, from the table: decode at the positions its steps attend (timed at
    # positions 8 and 15, they attend 9 and 16 slots: 12.5, rounded up), prefill at the prompt
    p = r["prediction"]
    assert p["decode"]["length"] == 13 and p["prefill"]["length"] == 8
    for phase in ("decode", "prefill"):
        q = p[phase]
        assert q["measured_ms"] == pytest.approx(r["decode_ms_per_token"]["median"]
                                                 if phase == "decode" else r["ttft_ms"]["median"])
        assert q["error_pct"] == pytest.approx(
            100 * (q["predicted_ms"] - q["measured_ms"]) / q["measured_ms"])
        assert q["flagged"] == (abs(q["error_pct"]) > 10)
    roof = r["roofline"]
    assert roof["share"] > 0 and roof["bandwidth_gbs"] > 0.1
    # a decode step reads every weight and the KV cache it attends (13 positions, as above)
    assert roof["weight_bytes"] == accounting.weight_bytes(B, "int8")
    assert roof["kv_bytes"] == accounting.kv_cache_bytes(B, 13) > 0
    assert roof["floor_ms"] == pytest.approx(
        1000 * (roof["weight_bytes"] + roof["kv_bytes"]) / (roof["bandwidth_gbs"] * 1e9))
    bw = json.loads((workspace / "devices" / "host" / "bandwidth.json").read_text())
    assert bw["schema_version"] == 2 and "read-only" in bw["method"]
    assert set(bw["read_bytes_per_s"]) == {"1", str(bw["threads"])}
    md = (out / "report.md").read_text()
    for word in ("Predicted vs measured", "tg8", "pp8", "time to first token", "peak RSS",
                 "fingerprint key", "latency.png", "roofline"):
        assert word in md, word


@pytest.mark.slow
def test_deploy_never_overwrites_a_report(monkeypatch, capsys, deployed, workspace):
    code, _, err = run(monkeypatch, capsys, "deploy", "tiny-b", "--format", "executorch",
                       *FAST, "--workspace", str(workspace))
    assert code == 2 and "report.json exists" in err and "--force" in err


@pytest.mark.slow
def test_card_and_table_with_different_vocab_is_an_error(monkeypatch, capsys, tmp_path):
    save_card(A, tmp_path / "models" / "tiny-a.json")
    table_for(Workspace(tmp_path), "onnxruntime", "int8", vocab=50272)
    code, _, err = run(monkeypatch, capsys, "deploy", "tiny-a", "--format", "onnx", *FAST,
                       "--workspace", str(tmp_path))
    assert code == 2 and "vocab 256" in err and "50272" in err and "--no-predict" in err


@pytest.mark.slow
def test_onnx_deploy_and_compare_ratios_come_from_the_same_measurements(monkeypatch, capsys,
                                                                         workspace):
    code, out, err = run(monkeypatch, capsys, "compare", "tiny-a", "tiny-b", "--format", "onnx",
                         "--baseline", "tiny-b", *FAST, "--rounds", "3", "--workspace",
                         str(workspace), "--json")
    assert code == 0, err
    c = json.loads(out)
    assert Path(c["plot"]).is_file() and c["baseline"] == "tiny-b"
    assert c["rounds"] == 3 and c["side_by_side"] and "bench round 3 of 3" in err
    reports = {row["card"]: json.loads((Path(row["report"]).parent / "report.json").read_text())
               for row in c["rows"]}
    base = reports["tiny-b"]
    for row in c["rows"]:
        r = reports[row["card"]]
        assert r["format"] == "onnx" and r["runtime"] == "onnxruntime"
        # each card's report lives in the compare folder, pooled over the three rounds
        assert Path(r["out_dir"]) == Path(c["out_dir"]) / row["card"]
        assert r["rounds"] == 3 and r["repeat"] == 2 and r["bench"]["rounds"] == 3
        assert len(r["bench"]["decode_samples_ms"]) == r["decode_ms_per_token"]["n"] == 6
        assert sorted(r["bench"]["raw"]) == ["round 1", "round 2", "round 3"]
        # a card's own time: its export and its benches, within the whole compare's (reports
        # round to 0.1 s)
        assert r["bench"]["wall_s"] <= r["wall_s"] + 0.05 and r["wall_s"] <= c["wall_s"]
        assert row["speedup"] == (r["decode_tokens_per_s"]["median"]
                                  / base["decode_tokens_per_s"]["median"])
        assert row["size_ratio"] == base["size_bytes"] / r["size_bytes"]
    rows = {row["card"]: row for row in c["rows"]}
    assert rows["tiny-b"]["speedup"] == 1.0 and rows["tiny-a"]["params_ratio"] > 1.0
    # no table for onnxruntime in this workspace: said so, not invented
    assert "no latency table" in reports["tiny-a"]["prediction"]["reason"]

    code, _, err = run(monkeypatch, capsys, "compare", "tiny-a", "tiny-b", "--format", "onnx",
                       *FAST, "--workspace", str(workspace))
    assert code == 2 and "compare.json exists" in err


def test_deploy_refuses_bad_requests(monkeypatch, capsys, tmp_path):
    save_card(A, tmp_path / "models" / "tiny-a.json")
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "ortonly.toml").write_text(
        'name = "ortonly"\ntransport = "local"\nruntimes = ["onnxruntime"]\n')
    code, _, err = run(monkeypatch, capsys, "deploy", "tiny-a", "--device", "ortonly",
                       "--format", "executorch", *FAST, "--workspace", str(tmp_path))
    assert code == 2 and "cannot run executorch" in err and "onnxruntime" in err
    code, _, err = run(monkeypatch, capsys, "deploy", "tiny-a", "--format", "coreml", *FAST,
                       "--workspace", str(tmp_path))
    assert code == 2 and "macOS" in err
    code, _, err = run(monkeypatch, capsys, "deploy", "tiny-a", "--prompt", "30", "--generate",
                       "8", "--workspace", str(tmp_path))
    assert code == 2 and "exceeds the context" in err
    code, _, err = run(monkeypatch, capsys, "compare", "tiny-a", "--rounds", "0",
                       "--workspace", str(tmp_path))
    assert code == 2 and "--rounds and --repeat must be at least 1" in err


@pytest.mark.slow
def test_compare_reuses_a_matching_export_and_leaves_deploys_alone(tmp_path):
    """The demo exports its comparison card in a worker while profiling (`export_for_deploy`);
    compare benches that artifact instead of exporting again, exports the other card into its
    own folder, and writes no report where `deploy` keeps its own."""
    from merino_mobile.deploy import compare, deploy_dir, export_for_deploy
    from merino_mobile.export import reusable_export

    ws = Workspace(tmp_path)
    out = deploy_dir(ws, A.name, "host", "executorch", "int8") / "artifact"
    export_for_deploy(A, out, "executorch", "int8", 16)
    made = (out / "model.pte").stat().st_mtime_ns
    assert reusable_export(out, A, "executorch", "int8", 16) is not None
    # another card, cache length or quantization is another export
    assert reusable_export(out, B, "executorch", "int8", 16) is None
    assert reusable_export(out, A, "executorch", "int8", 32) is None
    assert reusable_export(out, A, "executorch", "fp32", 16) is None
    # an export written by an older exporter (another EXPORTER_VERSION) is made again
    meta = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps(meta | {"exporter_version": 1}))
    assert reusable_export(out, A, "executorch", "int8", 16) is None
    (out / "export.json").write_text(json.dumps(meta))
    said: list[str] = []
    c = compare(ws, [A, B], "host", "executorch", "int8", prompt=8, generate=8, repeat=2,
                rounds=1, predict_latency=False, say=said.append)
    assert (out / "model.pte").stat().st_mtime_ns == made
    assert not (out.parent / "report.json").exists()
    reports = {r["card"]: json.loads((Path(r["report"]).parent / "report.json").read_text())
               for r in c["rows"]}
    assert reports["tiny-a"]["artifact"] == str(out / "model.pte")
    assert reports["tiny-b"]["artifact"] == str(Path(c["out_dir"]) / "tiny-b" / "artifact"
                                                / "model.pte")
    assert reports["tiny-a"]["export"]["verification"]["passed"] is True
    assert any("reusing the export of tiny-a" in m for m in said)
    assert any("exporting tiny-b" in m for m in said)




TINY_SPACE = """schema_version = 1
name = "tiny"
vocab = 256
context = 32
head_dim = 16
max_blocks = 2
widths = [32, 64]
ffn_ratios = [1.0, 2.0]
depth = [0, 2]
"""


@pytest.mark.slow
def test_bare_deploy_deploys_the_last_design(monkeypatch, capsys, tmp_path):
    ws = ["--workspace", str(tmp_path)]
    save_card(A, tmp_path / "models" / "tiny-a.json")  # a card `design` did not write
    code, _, err = run(monkeypatch, capsys, "deploy", *ws)
    assert code == 2 and "run `merino-mobile design --latency 50ms` first" in err
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "tiny.toml").write_text(TINY_SPACE)
    for budget, name in (("60k", "older"), ("120k", "newer")):
        code, _, err = run(monkeypatch, capsys, "design", "--params", budget, "--space", "tiny",
                           "--name", name, *ws)
        assert code == 0, err
    code, out, err = run(monkeypatch, capsys, "deploy", "--format", "onnx", "--quant", "fp32",
                         "--no-predict", *FAST, "--json", *ws)
    assert code == 0, err
    assert "deploying newer, the last design" in err
    assert json.loads(out)["card"]["name"] == "newer"
