"""`design --verify --device <phone>` over ADB: the loop's benches and its calibration refit go
through the device layer to the loopback adbd (tests/adbd), which stands for a Pixel 7 (this
machine has none). Everything on our side is the real code: real sockets, adb-shell, our
AdbTransport and AndroidPhone, the real exporter, and ExecuTorch's runtime behind the runner
the phone runs.

One workspace and one phone for the module. The tiny space of tests/test_verify.py (vocab 256,
width 32, 1 to 4 layers) is profiled on the phone on a five-point grid, and that table is scaled
to a tenth (`SCALE`), so that a budget can sit where the table admits the space's fastest design
and no design runs: the miss `--verify` exists for. Then `design --verify` twice, on the one
design of a memory budget that only the fastest design meets (exported once, benched by
both):
- at a latency budget it keeps: one bench, and the card records the measured latency;
- at that impossible budget: one bench, the refit of the phone's calibration from both benches,
  and the space's fastest design named as unmet, on one line.
A phone that does not answer is one line naming it and how to connect (exit 2, no traceback).

Exports dominate the time (the profile's programs, then the decoder: 15 to 25 s of CPU each
here), so the module exports fp32, and the decoder once. A bench is `design --verify`'s default
5 runs (the command has no --repeat), a few seconds on the loopback phone.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from adbd import RUNNER, LoopbackAdbd  # tests/adbd (pytest puts tests/ on sys.path)
from test_adb import write_profile  # the loopback phone's profile (its name is PHONE)
from test_verify import CONTEXT, DESIGN, SPACE, closed_port

from merino_mobile.card import Card, load_card
from merino_mobile.deploy.bench import DEFAULT_REPEAT, artifact_sha256
from merino_mobile.deploy.verify import judged
from merino_mobile.latency.calibration import calibration_path
from merino_mobile.latency.grid import Grid
from merino_mobile.latency.predict import predict_latency
from merino_mobile.latency.profile import run_profile
from merino_mobile.latency.table import Lut, lut_path, read_lut
from merino_mobile.workspace import Workspace

PHONE = "loopback-pixel7"
QUANT = "fp32"  # exports about a quarter faster than int8; the loop is the same
AT = ("--device", PHONE, "--quant", QUANT)
# The space's shapes at decode and nothing else: null, fixed, head, embedding, one layer.
GRID = Grid("verify-tiny", (32,), (2.0,), 16, 256, CONTEXT, (CONTEXT,), (), (32,))
# The profiled table is scaled to a tenth (test_verify's hand-made host table is about as fast):
# a budget the table admits can then lie far below what any design measures, whatever the pace
# of this shared machine.
SCALE = 0.1
FASTEST = "32x2x1"
# fp32 weights of 75 KB and a KV cache of 16 KB a layer at context 64: one layer fits, a
# second (shared: no more weights) does not
ONE_LAYER = ("--memory", "100KB")
REMOTE_DIR = "/data/local/tmp/merino-mobile"


def tiny_workspace(root: Path) -> Workspace:
    """A workspace holding the tiny space as search/tiny.toml and an empty devices/."""
    (root / "search").mkdir(parents=True, exist_ok=True)
    (root / "search" / "tiny.toml").write_text(SPACE)
    ws = Workspace.resolve(root)
    ws.devices.mkdir(parents=True, exist_ok=True)
    return ws


@pytest.fixture(scope="module")
def phone(tmp_path_factory, warm_runner):
    """The module's workspace, its loopback phone, and the phone's table (profiled, scaled)."""
    root = tmp_path_factory.mktemp("verify-adb")
    ws = tiny_workspace(root)
    warm_runner.wait_ready()
    with LoopbackAdbd(root / "phone", warm_runner=warm_runner) as d:
        write_profile(ws.devices / f"{PHONE}.toml", d.address, RUNNER, remote_dir=REMOTE_DIR)
        report = run_profile(ws, PHONE, quant=QUANT, grid=GRID)
        raw = read_lut(Path(report.lut))
        entries = {term: {phase: [(p, ms * SCALE) for p, ms in pts]
                          for phase, pts in phases.items()}
                   for term, phases in raw.entries.items()}
        lut = Lut(raw.device, raw.runtime, raw.quant, raw.fingerprint, entries, raw.created,
                  raw.failed, cache_bytes=raw.cache_bytes)
        lut.save(Path(report.lut))
        yield SimpleNamespace(ws=ws, adbd=d, report=report, lut=lut)


def stored(run, ws: Workspace) -> list[dict]:
    """The workspace's measurements of the phone, as `merino-mobile measurements` lists them."""
    return json.loads(run(ws.root, "measurements", "--device", PHONE, "--json").stdout)[
        "measurements"]


def benched_on_the_phone(phone, run, iterations: list[dict]) -> list[dict]:
    """The stored measurement of each iteration, checked to be the phone's: its name and its
    fingerprint (the table's), and its artifact run on the phone, pushed under its sha256."""
    by_id = {m["id"]: m for m in stored(run, phone.ws)}
    runs = [c for c in phone.adbd.commands if "--model_path=" in c]
    found = []
    for it in iterations:
        m = by_id[it["measurement_id"]]
        assert m["device"] == PHONE and m["fingerprint"] == phone.lut.fingerprint.key
        assert (m["runtime"], m["quant"], m["tag"]) == ("executorch", QUANT, "verify")
        assert judged(m["decode_samples_ms"], DEFAULT_REPEAT)[0].median == it["measured_ms"]
        sha = artifact_sha256(Path(it["artifact"]))
        assert m["artifact_sha256"] == sha
        assert any(f"--model_path={REMOTE_DIR}/{sha}/model.pte" in c for c in runs), sha
        found.append(m)
    return found


def predicted(phone, card: Card, depth: int) -> float:
    """The phone's (scaled) table's decode prediction for `card` with `depth` layers."""
    return predict_latency(replace(card, blocks=(replace(card.blocks[0], depth=depth),)),
                           phone.lut, CONTEXT)


@pytest.mark.slow
def test_the_table_is_the_phones(phone):
    r = phone.report
    assert (r.points, r.failed) == (len(GRID.points()), [])
    assert r.fingerprint["model"] == "Pixel 7" and r.fingerprint["cpus"] == [6, 7]
    assert Path(r.lut) == lut_path(phone.ws.devices, PHONE, "executorch", QUANT)
    assert phone.lut.fingerprint.cpu == "Tensor G2"
    assert any("--model_path=" in c for c in phone.adbd.commands)  # timed on the phone


@pytest.mark.slow
def test_verify_benches_on_the_phone_and_the_card_records_it(phone, run):
    res = run(phone.ws.root, "design", "--latency", "50ms", *ONE_LAYER, *DESIGN, "--verify",
              *AT, "--name", "phone-verified", "--json")
    out = json.loads(res.stdout)
    v = out["verify"]
    assert v["device"] == PHONE and v["status"] == "within_budget"
    (it,) = v["iterations"]
    assert it["architecture"] == FASTEST and it["how"] == "first"
    (m,) = benched_on_the_phone(phone, run, v["iterations"])
    assert (m["prompt"], m["generate"], m["context"]) == (CONTEXT - 1, 1, CONTEXT)
    assert Path(out["card"]) == phone.ws.models / "phone-verified.json"
    card = load_card(Path(out["card"]))
    assert card.meta["measured_latency_ms"] == v["measured_ms"] == judged(
        m["decode_samples_ms"], DEFAULT_REPEAT)[0].median
    assert card.meta["verify"]["device"] == PHONE
    assert card.meta["verify"]["measurement_id"] == m["id"]
    # the design was bounded by the phone's table, as profiled (and scaled)
    assert out["lut"]["device"] == PHONE and out["lut"]["calibrated"] is False
    assert it["predicted_ms"] == pytest.approx(predicted(phone, card, 1))


@pytest.mark.slow
def test_a_budget_the_phone_cannot_keep_refits_from_its_benches(phone, run, tmp_path):
    """At a budget between the table's fastest design and the next one, the first design is the
    fastest, and it runs about ten times slower on the phone: the loop refits the calibration
    from the phone's measurements (beside the phone's table) and ends unmet, on one line."""
    ws = phone.ws
    # a card of the space, for the predictions (a plain design: nothing exported or benched)
    plain = tmp_path / "plain.json"
    run(ws.root, "design", "--latency", "50ms", *DESIGN, *AT, "--out", str(plain))
    card = load_card(plain)
    p1, p2 = predicted(phone, card, 1), predicted(phone, card, 2)
    budget = float(f"{(p1 + p2) / 2:.3g}")
    assert p1 < budget < p2
    res = run(ws.root, "design", "--latency", f"{budget:g}ms", *DESIGN, "--verify", *AT,
              "--name", "impossible", "--json", ok=False)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: the space cannot meet the latency budget {budget:g}ms on "
                           f"{PHONE} once measured: its fastest design measured, {FASTEST} (")
    folder = ws.root / "build" / "verify" / f"impossible-{PHONE}-executorch-{QUANT}"
    state = json.loads((folder / "verify.json").read_text())
    assert state["status"] == "unmet" and [i["how"] for i in state["iterations"]] == ["first"]
    (first,) = state["iterations"]
    assert first["measured_ms"] > budget and first["median_lo_ms"] > budget
    # the same design as the other verify's, when it ran first: its export is reused
    assert first["export_reused"] == (ws.models / "phone-verified.json").exists()
    benched_on_the_phone(phone, run, state["iterations"])
    # the refit: the phone's calibration, beside its table, fitted on every bench of the phone
    table = lut_path(ws.devices, PHONE, "executorch", QUANT)
    sidecar = calibration_path(ws.devices, PHONE, "executorch", QUANT)
    assert sidecar.parent == table.parent == ws.devices / PHONE
    cal = json.loads(sidecar.read_text())
    assert cal["device"] == PHONE and cal["fingerprint"] == phone.lut.fingerprint.key
    assert cal["table_source"] == str(table)
    ids = sorted(m["id"] for m in stored(run, ws))
    assert first["measurement_id"] in ids and sorted(cal["measurement_ids"]) == ids
    assert cal["skipped"] == []


def phone_check(run, ws: Workspace) -> dict:
    """The "phone" item of `merino-mobile devices PHONE --json` (exit 1 when not ready)."""
    res = run(ws.root, "devices", PHONE, "--json", ok=False)
    (check,) = [c for c in json.loads(res.stdout)["checks"] if c["name"] == "phone"]
    return check


@pytest.mark.parametrize("how", ["adbd stopped", "wrong port"])
def test_an_unreachable_phone_is_one_line_naming_it_and_how_to_connect(how, run, tmp_path):
    ws = tiny_workspace(tmp_path / "ws")  # no table either: the phone is checked first
    if how == "adbd stopped":
        d = LoopbackAdbd(tmp_path / "phone").start()
        address = d.address
        profile = write_profile(ws.devices / f"{PHONE}.toml", address, RUNNER,
                                remote_dir=REMOTE_DIR)
        assert phone_check(run, ws)["ok"] is True  # it answered, then goes away
        d.stop()
    else:
        address = f"127.0.0.1:{closed_port()}"
        profile = write_profile(ws.devices / f"{PHONE}.toml", address, RUNNER,
                                remote_dir=REMOTE_DIR)
    check = phone_check(run, ws)
    assert check["ok"] is False
    res = run(ws.root, "design", "--latency", "1ms", *DESIGN, "--verify", *AT, "--json",
              ok=False)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1  # one line
    line = res.stderr.strip()
    # what `devices PHONE` says is missing, with its fix: how to connect, where the address is
    assert line == " ".join(f"error: {PHONE}: {check['detail']}; {check['fix']}".split())
    assert f"nothing answers at {address}" in line and "Wireless debugging" in line
    assert f"check the address in {profile}" in line
    assert not (ws.root / "build").exists()  # nothing designed or exported
