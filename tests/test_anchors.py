"""`profile --anchors`: whole models of the space benched inside a real profile on this host,
interleaved with the micro-benchmarks, stored, reused on a rerun, and fitted into the table's
calibration at the end (real exports, real ExecuTorch runtime)."""

from __future__ import annotations

import json

import pytest
from test_profile import HOST

from merino_mobile.latency.anchors import TAG, anchor_cards
from merino_mobile.latency.calibration import calibration_path
from merino_mobile.latency.grid import make_grid
from merino_mobile.latency.profile import run_profile
from merino_mobile.latency.store import read_measurements
from merino_mobile.space import load_space
from merino_mobile.workspace import Workspace

SPACE = """schema_version = 1
max_blocks = 2
depth = [0, 3]
widths = [32, 64, 96]
ffn_ratios = [1.0, 2.0]
head_dim = 32
vocab = 256
context = 64
"""


def make_ws(root) -> Workspace:
    (root / "search").mkdir(parents=True, exist_ok=True)
    (root / "devices").mkdir(exist_ok=True)
    (root / "search" / "tiny.toml").write_text(SPACE)
    (root / "devices" / "host.toml").write_text(HOST.format(spread=1.5, seconds=0.2,
                                                                  repeats=20, passes=1))
    return Workspace.resolve(root)


def test_anchors_span_the_space_and_belong_to_it():
    for name in ("default", "merino-paper"):
        space = load_space(f"search/{name}.toml")
        cards = anchor_cards(space, 4)
        assert len(cards) == 4
        assert all(space.contains(c) for c in cards)
        blocks = [b for c in cards for b in c.blocks]
        # both ends of the space, every width in two anchors, the narrowest deepest
        assert {b.width for b in blocks} >= {min(space.widths), max(space.widths)}
        assert all(sum(b.width == w for b in blocks) == 2 for w in {b.width for b in blocks})
        by_width = sorted((b.width, b.depth) for b in blocks)
        assert by_width[0][1] == max(space.depths) and by_width[-1][1] == 1
        assert [d for _, d in by_width] == sorted((d for _, d in by_width), reverse=True)
    assert anchor_cards(load_space("search/default.toml"), 0) == []


def test_too_many_anchors_is_one_clear_error():
    from merino_mobile.errors import UserError

    with pytest.raises(UserError, match="--anchors must be between 0 and 16"):
        anchor_cards(load_space("search/default.toml"), 17)


@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    ws = make_ws(tmp_path_factory.mktemp("ws"))
    grid = make_grid(ws.search / "tiny.toml", "quick", contexts=[16], prompts=[])
    said: list[str] = []
    report = run_profile(ws, "host", grid=grid, anchors=3, space=ws.search / "tiny.toml",
                         progress=lambda msg, done, total: said.append(msg))
    return ws, grid, report, said


def test_anchors_are_benched_among_the_points_and_stored(anchored):
    ws, grid, report, said = anchored
    assert not report.failed
    assert [a["card"] for a in report.anchors] == [
        "anchor-32x1x3_64x1x2", "anchor-64x1x2_96x1x1", "anchor-32x2x3_96x2x1"]
    ms = [m for m in read_measurements(ws.state, device="host") if m.tag == TAG]
    assert sorted(m.id for m in ms) == sorted(a["measurement_id"] for a in report.anchors)
    assert all(m.context == 16 and m.runtime == "executorch" and m.quant == "fp32"
               and m.decode_median_ms > 0 for m in ms)
    # interleaved: spread among the programs' points (this tiny grid is one program, so some
    # anchors go before its points and some after), not all before nor all after them
    anchors = [i for i, m in enumerate(said) if m.startswith("benching anchor")]
    points = [i for i, m in enumerate(said) if m.startswith(("layer[", "head[", "fixed["))]
    assert len(anchors) == 3
    assert anchors[0] < points[0] and points[-1] < anchors[-1]


def test_the_calibration_is_refitted_on_the_new_table(anchored):
    ws, grid, report, _ = anchored
    cal = report.calibration
    assert cal is not None and cal["models"] == 3 and cal["measurements"] == 3
    data = json.loads(calibration_path(ws.devices, "host", "executorch", "fp32").read_text())
    assert data["table_source"] == report.lut
    assert sorted(data["measurement_ids"]) == sorted(a["measurement_id"]
                                                     for a in report.anchors)
    # applied or not, the file says why, and the report says the same
    assert data["reason"] == cal["reason"] and data["applied"] == cal["applied"]


def test_a_rerun_benches_no_anchor_twice(anchored):
    ws, grid, report, _ = anchored
    again = run_profile(ws, "host", grid=grid, anchors=3, space=ws.search / "tiny.toml")
    assert again.anchors == [] and again.anchors_stored == 3 and again.measured == 0
    assert len([m for m in read_measurements(ws.state, device="host") if m.tag == TAG]) == 3


def test_cli_profile_anchors_json_and_refusals(anchored, run):
    ws, grid, report, _ = anchored
    r = run(ws.root, "profile", "--space", "tiny", "--context", "16", "--prompt", "0",
            "--anchors", "3", "--json")
    out = json.loads(r.stdout)
    assert out["anchors"] == [] and out["anchors_stored"] == 3
    assert out["calibration"]["models"] == 3
    bad = run(ws.root, "profile", "--anchors", "-1", ok=False)
    assert bad.returncode == 2 and "--anchors" in bad.stderr
    fleet = run(ws.root, "profile", "--anchors", "2", "--cluster", "auto", ok=False)
    assert fleet.returncode == 2 and "--anchors 2 with --cluster" in fleet.stderr
    assert "Traceback" not in fleet.stderr
