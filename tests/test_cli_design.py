"""The design and info commands end to end, as a user runs them: the console entry point run
in-process (tests/cli_runner.py), its exit code, stdout and stderr checked."""

import json

import pytest

# `ws` (a workspace with search/tiny.toml) and `run` come from tests/conftest.py


def test_design_writes_a_card_that_info_reads_back(ws, run):
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


def test_design_out_refuses_to_overwrite_without_force(ws, run):
    target = ws / "mine.json"
    run(ws, "design", "--params", "300k", "--space", "tiny", "--out", str(target))
    proc = run(ws, "design", "--params", "300k", "--space", "tiny", "--out", str(target), ok=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    run(ws, "design", "--params", "200k", "--space", "tiny", "--out", str(target), "--force")


def test_ea_and_brute_solvers_from_the_cli(ws, run):
    exact = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--json").stdout)
    brute = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--solver",
                           "brute", "--json").stdout)
    ea = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--solver", "ea",
                        "--ea-seconds", "0.5", "--json").stdout)
    assert brute["entropy"] == pytest.approx(exact["entropy"])
    assert ea["entropy"] <= exact["entropy"] + 1e-9
    assert ea["solver"]["optimal"] is False


def test_sweep_prints_the_frontier_and_plots_it(ws, run):
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
    (["design", "--params", "1e999"], "--params '1e999' is too large to be a number"),
    (["design", "--latency", "inf"], "--latency 'inf' is not a finite number"),
    (["design", "--memory", "nan"], "--memory 'nan' is not a finite number"),
    (["design", "--params", "1M:1e999:1M"], "--params '1e999' is too large to be a number"),
    (["design", "--flops", "1e308G"], "--flops '1e308G' is too large"),
    (["design", "--params", "1M", "--rho", "nan"], "--rho must be a finite positive number"),
    (["design", "--params", "300k", "--space", "tiny", "--solver", "ea", "--ea-seconds", "inf"],
     "--ea-seconds must be a finite positive number"),
    (["design", "--params", "300k", "--space", "tiny", "--name", "../../x"],
     "card name '../../x' is not a plain file name"),
    (["design", "--params", "300k", "--space", "tiny", "--name", ".hidden"],
     "not starting with '.'"),
    (["design", "--params", "1M:1000M:1k", "--space", "tiny"],
     "the params sweep 1.0M:1.0G:1.0k has 999,001 points"),
])
def test_bad_input_is_one_clear_line(ws, run, args, fragment):
    proc = run(ws, *args, ok=False)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and proc.stdout == ""
    assert not (ws / "models").exists() and not (ws.parent / "x.json").exists()


def test_a_sweep_over_the_limit_names_the_fix(ws, run):
    proc = run(ws, "design", "--params", "100k:400k:1k", "--space", "tiny", ok=False)
    assert proc.returncode == 2
    assert "301 points" in proc.stderr and "at most 200" in proc.stderr
    assert "use a step of at least 1.5k" in proc.stderr
    assert not (ws / "build").exists()  # refused before solving or plotting anything


def test_a_budget_a_few_units_below_the_optimum_is_not_exceeded(ws, run):
    """Issue 15: `design --params 59849452` returned 59,849,472 parameters as optimal (HiGHS's
    tolerance on scaled rows); 59849471 makes HiGHS return the 59,849,472 design even on exact
    rows (integer variables off by 1e-6), so the exact check has to cut it off."""
    for budget in (59849452, 59849471):
        out = json.loads(run(ws, "design", "--params", str(budget), "--json").stdout)
        assert out["params"] <= budget
        assert out["solver"]["optimal"] is True


def test_malformed_space_names_the_file(ws, run):
    (ws / "search" / "broken.toml").write_text("widths = [1, 2\n")
    proc = run(ws, "design", "--params", "1M", "--space", "broken", ok=False)
    assert proc.returncode == 2 and "broken.toml: not valid TOML" in proc.stderr


def test_latency_without_a_lut_says_which_profile_command_to_run(ws, run):
    proc = run(ws, "design", "--latency", "50ms", "--device", "host", ok=False)
    assert proc.returncode == 2
    assert "merino-mobile profile --device host" in proc.stderr


def test_design_against_a_latency_table_of_this_host(ws, run):
    """`design --device host --latency` reads devices/host/lut-*.json (here built from synthetic
    rows, fingerprinted as this machine) and returns a design whose predicted latency fits."""
    from test_lut import rows

    from merino_mobile.card import load_card
    from merino_mobile.device.host import HostDevice
    from merino_mobile.device.profiles import load_profile
    from merino_mobile.latency import predict_latency
    from merino_mobile.latency.table import Lut, lut_path
    from merino_mobile.workspace import Workspace

    w = Workspace.resolve(ws)
    fingerprint = HostDevice(load_profile(w, "host")).fingerprint("executorch", "int8")
    lut = Lut.from_rows(rows("int8"), fingerprint, "executorch", "int8")
    lut.save(lut_path(w.devices, "host", "executorch", "int8"))

    out = json.loads(run(ws, "design", "--device", "host", "--latency", "0.4ms", "--space", "tiny",
                         "--context", "64", "--json").stdout)
    assert out["lut"] == {"device": "host", "runtime": "executorch", "quant": "int8",
                          "calibrated": False}
    assert 0 < out["predicted_latency_ms"] <= 0.4
    card = load_card(out["card"])
    assert predict_latency(card, lut, 64) == pytest.approx(out["predicted_latency_ms"])
    assert card.meta["latency_table"]["device"] == "host"

    proc = run(ws, "design", "--device", "host", "--latency", "1us", "--space", "tiny",
               "--context", "64", ok=False)
    assert proc.returncode == 2 and "latency_ms budget 0.001ms is below the smallest" in proc.stderr
