"""The design and info commands end to end, as a user runs them (a subprocess per command)."""

import json
import subprocess
import sys

import pytest

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


def run(tmp_path, *args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "merino_mobile", *args, "--workspace",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "tiny.toml").write_text(TINY_SPACE)
    return tmp_path


def test_design_writes_a_card_that_info_reads_back(ws):
    out = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--context", "64",
                         "--json").stdout)
    for key in ("architecture", "entropy", "rho", "params", "flops_per_token", "kv_cache_bytes",
                "predicted_latency_ms", "solver", "card"):
        assert key in out
    assert out["predicted_latency_ms"] is None
    assert out["solver"]["name"] == "exact" and out["solver"]["optimal"] is True
    assert out["params"] <= 300_000
    assert set(out["architecture"][0]) == {"width", "ffn_ratio", "heads", "depth", "shared"}
    card = out["card"]
    assert card.startswith(str(ws / "models"))
    info = json.loads(run(ws, "info", card, "--context", "64", "--json").stdout)
    for key in ("params", "flops_per_token", "kv_cache_bytes", "entropy", "rho"):
        assert info[key] == pytest.approx(out[key])
    # the same name again never replaces the first card
    again = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--context", "64",
                           "--json").stdout)
    assert again["card"] != card


def test_design_out_refuses_to_overwrite_without_force(ws):
    target = ws / "mine.json"
    run(ws, "design", "--params", "300k", "--space", "tiny", "--out", str(target))
    proc = run(ws, "design", "--params", "300k", "--space", "tiny", "--out", str(target), ok=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    run(ws, "design", "--params", "200k", "--space", "tiny", "--out", str(target), "--force")


def test_ea_and_brute_solvers_from_the_cli(ws):
    exact = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--json").stdout)
    brute = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--solver",
                           "brute", "--json").stdout)
    ea = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--solver", "ea",
                        "--ea-seconds", "0.5", "--json").stdout)
    assert brute["entropy"] == pytest.approx(exact["entropy"])
    assert ea["entropy"] <= exact["entropy"] + 1e-9
    assert ea["solver"]["optimal"] is False


def test_sweep_prints_the_frontier_and_plots_it(ws):
    out = json.loads(run(ws, "design", "--params", "100k:400k:100k", "--space", "tiny",
                         "--json").stdout)
    points = out["points"]
    assert [p["budget"] for p in points] == [100e3, 200e3, 300e3, 400e3]
    feasible = [p for p in points if p.get("metrics")]
    entropies = [p["metrics"]["entropy"] for p in feasible]
    assert entropies == sorted(entropies)  # a bigger budget never lowers the optimum
    png = ws / "build" / "pareto-params.png"
    assert out["plot"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,fragment", [
    (["design", "--params", "60"], "missing a unit"),
    (["design", "--latency", "50"], "has no unit: write 50ms or 50s"),
    (["design", "--memory", "-1MB"], "cannot read"),
    (["design"], "give at least one budget"),
    (["design", "--params", "1k", "--space", "tiny"], "smallest achievable"),
    (["design", "--params", "1M", "--solver", "magic"], "unknown --solver"),
    (["design", "--params", "1M", "--space", "nope"], "no search space named 'nope'"),
    (["design", "--latency", "50ms", "--device", "toaster"], "toaster"),
    (["design", "--params", "1M:2M:1M", "--flops", "1G:2G:1G"], "only one budget"),
    (["info", "missing-card"], "known: gpt2"),
])
def test_bad_input_is_one_clear_line(ws, args, fragment):
    proc = run(ws, *args, ok=False)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_space_names_the_file(ws):
    (ws / "search" / "broken.toml").write_text("widths = [1, 2\n")
    proc = run(ws, "design", "--params", "1M", "--space", "broken", ok=False)
    assert proc.returncode == 2 and "broken.toml: not valid TOML" in proc.stderr


def test_latency_without_a_lut_says_which_profile_command_to_run(ws):
    proc = run(ws, "design", "--latency", "50ms", "--device", "host", ok=False)
    assert proc.returncode == 2
    assert "merino-mobile profile --device host" in proc.stderr


def test_design_against_a_latency_table_of_this_host(ws):
    """`design --device host --latency` reads devices/host/lut-*.json (here built from synthetic
    rows, fingerprinted as this machine) and returns a design whose predicted latency fits."""
    from test_lut import rows

    from merino_mobile.card import load_card
    from merino_mobile.device.host import HostDevice
    from merino_mobile.device.profiles import load_profile
    from merino_mobile.latency import predict_latency
    from merino_mobile.lut import Lut, lut_path
    from merino_mobile.workspace import Workspace

    w = Workspace.resolve(ws)
    fingerprint = HostDevice(load_profile(w, "host")).fingerprint("executorch", "int8")
    lut = Lut.from_rows(rows("int8"), fingerprint, "executorch", "int8")
    lut.save(lut_path(w.devices, "host", "executorch", "int8"))

    out = json.loads(run(ws, "design", "--device", "host", "--latency", "0.4ms", "--space", "tiny",
                         "--context", "64", "--json").stdout)
    assert out["lut"] == {"device": "host", "runtime": "executorch", "quant": "int8"}
    assert 0 < out["predicted_latency_ms"] <= 0.4
    card = load_card(out["card"])
    assert predict_latency(card, lut, 64) == pytest.approx(out["predicted_latency_ms"])
    assert card.meta["latency_table"]["device"] == "host"

    proc = run(ws, "design", "--device", "host", "--latency", "1us", "--space", "tiny",
               "--context", "64", ok=False)
    assert proc.returncode == 2 and "latency_ms budget 0.001ms is below the smallest" in proc.stderr
