"""The fleet (merino_mobile.fleet) on a real Ray cluster on 127.0.0.1, with two loopback phones.

One Ray cluster for the module (`ray.init`, two CPUs, listening on the loopback only); two
loopback adbds (tests/adbd) stand for two phones, each declared as its own custom resource, as
two hosts' `fleet start` would. Everything on our side is the real code: the actors, the program
shipping through the object store, the export tasks, the profile run, the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from merino_mobile.errors import UserError
from merino_mobile.fleet import cluster as fleet_cluster
from merino_mobile.fleet import control, profile_fleet
from merino_mobile.fleet.cluster import NAMESPACE, device_resource
from merino_mobile.fleet.remote import driver_label
from merino_mobile.latency import programs
from merino_mobile.latency.grid import make_grid
from merino_mobile.latency.store import Store
from merino_mobile.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parent))
from adbd import RUNNER, LoopbackAdbd, WarmRunner  # noqa: E402
from cli_runner import run as run_cli  # noqa: E402

A, B = "loopback-a", "loopback-b"
TINY_SPACE = """schema_version = 1
name = "fleet-tiny"
vocab = 256
context = 64
head_dim = 64
positions = "learned"
tied_head = true
embed_width = 0
max_blocks = 1
widths = [64]
ffn_ratios = [1.0]
depth = [0, 1]
sharing = true
order = "non-decreasing"
"""
# the grid of TINY_SPACE: null, fixed, head, embedding and one decode layer (the sentinel)
GRID_ARGS = ("--grid", "quick", "--context", "16", "--prompt", "0")


def tiny_grid(ws: Workspace):
    return make_grid(ws.search / "fleet-tiny.toml", "quick", [16], [])


def phone_profile(ws: Workspace, name: str, address: str, threads: int, pause_s: float = 0.0
                  ) -> None:
    """A loopback phone's profile; the two phones differ in threads, so in fingerprint (two
    identical phones share one table, which the fleet refuses to measure twice). `pause_s`
    before each program gives a test the time to kill the phone's worker between two."""
    (ws.devices / f"{name}.toml").write_text(f"""
schema_version = 1
name = "{name}"
transport = "adb"
runtimes = ["executorch"]
threads = {threads}
cpus = []

[adb]
address = "{address}"
adbkey = "{ws.root / 'android' / 'adbkey'}"
remote_dir = "/data/local/tmp/merino-mobile"
runner = "{RUNNER}"

[cooldown]
max_temp_c = 45.0
wait_s = 0.2
max_wait_s = 5.0
pause_s = {pause_s}

[sentinel]
every = 100
threshold = 100.0

[measure]
warmup = 0
min_repeats = 2
max_repeats = 3
target_spread = 100.0
max_seconds = 2.0
timeout_s = 90.0
""")


def workspace(root: Path, phones: dict[str, LoopbackAdbd], cache_from: Workspace | None = None,
              pause_a: float = 0.0) -> Workspace:
    ws = Workspace.resolve(root)
    ws.devices.mkdir(parents=True)
    ws.search.mkdir(parents=True)
    (ws.search / "fleet-tiny.toml").write_text(TINY_SPACE)
    for i, (name, phone) in enumerate(phones.items()):
        phone_profile(ws, name, phone.address, threads=2 - i, pause_s=pause_a if i == 0 else 0)
    if cache_from is not None:
        shutil.copytree(cache_from.state / "cache", ws.state / "cache")
    return ws


def stored(ws: Workspace) -> dict[str, list[str]]:
    """Point keys stored per fingerprint key (a list: a duplicate would show)."""
    store = Store.open(ws.state)
    try:
        out: dict[str, list[str]] = {}
        for fp, point in store.db.execute("SELECT fingerprint, point FROM points"):
            out.setdefault(fp, []).append(point)
        return out
    finally:
        store.close()


def stored_of(ws: Workspace, device: str) -> int:
    """How many points of `device` (by the name in its fingerprint) the store holds."""
    store = Store.open(ws.state)
    try:
        rows = store.db.execute("SELECT f.json FROM points p JOIN fingerprints f "
                                "ON p.fingerprint = f.key").fetchall()
        return sum(json.loads(j)["device"] == device for (j,) in rows)
    finally:
        store.close()


def listening_of_descendants() -> list[tuple[str, int]]:
    """The TCP sockets this process and its descendants (Ray's processes) listen on."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # ended meanwhile
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    inodes = set()
    for pid in mine:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                addr, port = f[1].split(":")
                raw = bytes.fromhex(addr)
                # /proc writes each 32-bit word in host (little-endian) order
                words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
                ip = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                                      b"".join(words))
                out.append((ip, int(port, 16)))
    return out


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or \
        ip.startswith("::ffff:127.")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster on 127.0.0.1 holding both phones' resources (two hosts' `fleet
    start` would declare one each); usage reports off, the loopback only (see cluster.py); the
    node's program shelf and the fleet record in temporary folders (Ray's processes read the
    environment once, here)."""
    mp = pytest.MonkeyPatch()
    for k, v in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_USAGE_STATS_ENABLED", "0"),
                 ("RAY_AUTH_MODE", "token"),
                 ("MERINO_MOBILE_FLEET_CACHE", str(tmp_path_factory.mktemp("node-cache"))),
                 ("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))):
        mp.setenv(k, v)
    mp.delenv("MERINO_MOBILE_CLUSTER", raising=False)
    import ray

    ray.init(num_cpus=2, resources={device_resource(A): 1, device_resource(B): 1},
             include_dashboard=False, _node_ip_address="127.0.0.1", namespace=NAMESPACE,
             log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def warm():
    runner = WarmRunner()
    runner.wait_ready()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def phones(tmp_path_factory, warm):
    root = tmp_path_factory.mktemp("phones")
    with LoopbackAdbd(root / "a", warm_runner=warm) as a, \
            LoopbackAdbd(root / "b", warm_runner=warm) as b:
        yield {A: a, B: b}


@pytest.fixture
def few_methods(monkeypatch):
    """Two programs for the five points (four methods, then the decode layer alone), so a run
    has requests to stop between."""
    monkeypatch.setattr(programs, "MAX_METHODS", 4)


@pytest.fixture(scope="module")
def first(tmp_path_factory, ray_cluster, phones):
    """Both phones profiled at once on a fresh workspace (the exports done as tasks)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(programs, "MAX_METHODS", 4)
    try:
        ws = workspace(tmp_path_factory.mktemp("first") / "ws", phones)
        node_cache = tmp_path_factory.mktemp("first-node-cache")
        r = profile_fleet(ws, [A, B], grid=tiny_grid(ws), node_cache=str(node_cache))
    finally:
        mp.undo()
    return ws, r, node_cache


def test_two_phones_at_once_store_the_points_of_two_profiles(first, phones, ray_cluster):
    from merino_mobile.latency.profile import run_profile

    ws, r, node_cache = first
    assert r.errors == {}
    assert set(r.reports) == {A, B}
    grid_keys = sorted(p.key for p in tiny_grid(ws).points())
    by_fp = stored(ws)
    assert len(by_fp) == 2  # one fingerprint per phone
    for name in (A, B):
        rep = r.reports[name]
        assert (rep.points, rep.skipped, rep.measured, rep.failed) == (5, 0, 5, [])
        assert sorted(by_fp[rep.fingerprint["key"]]) == grid_keys  # each point once
        assert json.loads(Path(rep.lut).read_text())["fingerprint"]["threads"] == \
            (2 if name == A else 1)
    # Two programs serve both phones (same runtime and quantization): built once each, by
    # tasks in Ray's workers, not in this process; each shipped to the node once.
    assert r.exports.built == 2 and r.exports.cached == 0
    assert all(t["pid"] != os.getpid() and t["node"] == "127.0.0.1" for t in r.exports.tasks)
    assert len(list((ws.state / "cache").glob("*.pte"))) == 2
    assert len(list((node_cache / "programs").iterdir())) == 2
    # each device prepares 4 times (the sentinel's program, both programs, the sentinel's again
    # at the end); a node fetches a program at most once per actor, usually once in all
    assert r.shipped + r.reused == 8 and 2 <= r.shipped <= 4
    # A separate profile of B now finds every point the fleet stored: the same fingerprint,
    # the same keys, nothing to measure.
    with_phone = run_profile(ws, B, grid=tiny_grid(ws))
    assert (with_phone.skipped, with_phone.measured) == (5, 0)
    assert with_phone.fingerprint["key"] == r.reports[B].fingerprint["key"]
    # nothing Ray started listens beyond the loopback
    sockets = listening_of_descendants()
    assert sockets and all(is_loopback(ip) for ip, _ in sockets), sockets


def test_a_killed_worker_loses_and_duplicates_nothing(tmp_path, first, phones, ray_cluster,
                                                      few_methods, monkeypatch, capsys):
    """A's actor is killed after its first program: A's run stops with one line, B's goes on;
    the rerun (the CLI, both devices, --json) measures exactly A's rest, from the cache."""
    ray = ray_cluster
    ws = workspace(tmp_path / "ws", phones, cache_from=first[0], pause_a=0.5)
    seen: dict[str, object] = {}

    def kill_a_after_its_first_program() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if stored_of(ws, A) >= 1:
                seen["status"] = control.status("auto")
                ray.kill(ray.get_actor(device_resource(A), namespace=NAMESPACE))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_after_its_first_program, daemon=True)
    killer.start()
    r = profile_fleet(ws, [A, B], grid=tiny_grid(ws), restarts=0)
    killer.join()
    assert r.exports.built == 0 and r.exports.cached == 2  # reused from the copied cache
    assert set(r.errors) == {A} and set(r.reports) == {B}
    assert "killed" in r.errors[A] and "rerun the same command" in r.errors[A]
    assert "\n" not in r.errors[A]
    devices = {d["name"]: d for n in seen["status"]["nodes"] for d in n["devices"]}
    assert set(devices) == {A, B} and devices[A]["driver"] == driver_label()
    kept = stored_of(ws, A)
    assert kept == 4  # the first program's points, committed when its request returned

    code, out, err = run_cli(monkeypatch, capsys, "profile", "--device", A, "--device", B,
                             "--cluster", "auto", "--space", "fleet-tiny", *GRID_ARGS,
                             "--workspace", str(ws.root), "--json")
    assert code == 0, err
    again = json.loads(out)["devices"]
    assert (again[A]["skipped"], again[A]["measured"]) == (4, 1)
    assert (again[B]["skipped"], again[B]["measured"]) == (5, 0)
    grid_keys = sorted(p.key for p in tiny_grid(ws).points())
    assert len(stored(ws)) == 2
    assert all(sorted(keys) == grid_keys for keys in stored(ws).values())
    assert f"{A}: " in err and f"{B}: " in err  # one progress line per device


def test_a_vanished_phone_stops_alone_and_a_lost_worker_resumes(tmp_path, first, warm,
                                                                 ray_cluster, few_methods):
    """B disappears in its first program (the usual one-line message); A's worker is killed
    after A's first program and started again: A completes, every point once."""
    ray = ray_cluster
    with LoopbackAdbd(tmp_path / "a", warm_runner=warm) as a, \
            LoopbackAdbd(tmp_path / "b", warm_runner=warm, die_after_commands=2,
                         die_counting="--model_path=") as b:
        ws = workspace(tmp_path / "ws", {A: a, B: b}, cache_from=first[0], pause_a=0.5)
        killed = threading.Event()

        def kill_a_once() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if stored_of(ws, A) >= 1:
                    ray.kill(ray.get_actor(device_resource(A), namespace=NAMESPACE))
                    killed.set()
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_a_once, daemon=True)
        killer.start()
        r = profile_fleet(ws, [A, B], grid=tiny_grid(ws), restarts=1)
        killer.join()
    assert killed.is_set()
    assert set(r.reports) == {A} and set(r.errors) == {B}
    assert "rerun the same command" in r.errors[B] and "\n" not in r.errors[B]
    assert r.restarts == {A: 1}
    rep = r.reports[A]
    assert (rep.skipped, rep.measured, rep.failed) == (4, 1, [])
    keys = stored(ws)[rep.fingerprint["key"]]
    assert sorted(keys) == sorted(p.key for p in tiny_grid(ws).points())


def test_one_line_errors(tmp_path, first, ray_cluster, phones, monkeypatch, capsys):
    ws = Workspace.resolve(tmp_path / "ws")
    shutil.copytree(first[0].root, ws.root)  # every point of A stored: nothing to measure
    phone_profile(ws, "nowhere", "127.0.0.1:9", threads=1)
    with pytest.raises(UserError, match=r"no node of the fleet has nowhere .*fleet start"):
        profile_fleet(ws, [A, "nowhere"], grid=tiny_grid(ws))
    with pytest.raises(UserError, match="given more than once"):
        profile_fleet(ws, [A, A], grid=tiny_grid(ws))
    # B's profile now reaches A's phone with A's threads: one table, not measured twice
    phone_profile(ws, B, phones[A].address, threads=2)
    r = profile_fleet(ws, [A, B], grid=tiny_grid(ws))
    assert set(r.reports) == {A} and r.reports[A].skipped == 5
    assert "measures as loopback-a does" in r.errors[B]
    code, _, err = run_cli(monkeypatch, capsys, "profile", "--device", A, "--device", B,
                           "--workspace", str(ws.root))
    assert code == 2 and "needs a fleet" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(UserError, match=f"no Ray cluster answers at 127.0.0.1:{closed}"):
        fleet_cluster.check_reachable(f"127.0.0.1:{closed}")
    with pytest.raises(UserError, match="--cluster must be auto or HOST:PORT"):
        fleet_cluster.resolve_address("pixel7")


def test_ray_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[fleet\]"'):
        fleet_cluster.import_ray()


def test_fleet_start_declares_what_this_host_reaches(tmp_path, phones, monkeypatch, capsys):
    ws = workspace(tmp_path / "ws", phones)
    phone_profile(ws, "unplugged", "127.0.0.1:9", threads=1)
    plan = control.plan_start(ws)
    assert plan.head and plan.address == "127.0.0.1:6379"
    assert set(plan.resources) >= {device_resource(A), device_resource(B), "device:host"}, \
        plan.devices
    assert device_resource("unplugged") not in plan.resources
    assert "--node-ip-address=127.0.0.1" in plan.command
    assert plan.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    joining = control.plan_start(ws, address="127.0.0.1:6379")
    assert "--head" not in joining.command and "device:host" not in joining.resources
    with pytest.raises(UserError, match="unplugged is not reachable"):
        control.plan_start(ws, devices=["unplugged"])
    code, out, err = run_cli(monkeypatch, capsys, "fleet", "start", "--dry-run", "--json",
                             "--workspace", str(ws.root))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["started"] is False and device_resource(A) in shown["resources"]


def test_fleet_status_lists_nodes_and_idle_devices(ray_cluster, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "fleet", "status", "--json")
    assert code == 0, err
    s = json.loads(out)
    (node,) = s["nodes"]
    assert node["address"] == "127.0.0.1" and node["head"]
    assert {d["name"]: d["doing"] for d in node["devices"]} == {A: "idle", B: "idle"}


def test_without_a_cluster_ray_is_never_imported(first, phones, tmp_path):
    """`merino-mobile profile` without --cluster, in a fresh process: the local path, no Ray
    (every point is stored already and no anchor is asked for, so it reads the phone's
    fingerprint and writes the table; anchors would export and bench whole models here)."""
    ws = Workspace.resolve(tmp_path / "ws")
    shutil.copytree(first[0].root, ws.root)
    script = f"""
import sys
from typer.testing import CliRunner
import merino_mobile.cli as cli
r = CliRunner().invoke(cli.app, ["profile", "--device", "{B}", "--space", "fleet-tiny",
                                 *{list(GRID_ARGS)!r}, "--anchors", "0",
                                 "--workspace", "{ws.root}", "--json"])
assert r.exit_code == 0, r.output
assert '"skipped": 5' in r.output, r.output
loaded = [m for m in sys.modules if m.split(".")[0] == "ray" or m.startswith("merino_mobile.fleet")]
assert not loaded, loaded
print("no ray")
"""
    env = {k: v for k, v in os.environ.items() if k != "MERINO_MOBILE_CLUSTER"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and "no ray" in proc.stdout, proc.stdout + proc.stderr


def test_one_artifact_benched_on_two_phones_at_once(tmp_path, first, ray_cluster, phones,
                                                    monkeypatch, capsys):
    """`bench --device A --device B --cluster auto`: one actor per phone, the artifact shipped
    to the node, both benches stored by the driver under each phone's own name."""
    from merino_mobile.card import Block, Card
    from merino_mobile.export import export
    from merino_mobile.latency.store import read_measurements

    ws = Workspace.resolve(tmp_path / "ws")
    shutil.copytree(first[0].root, ws.root)
    card = Card("fleet-bench", vocab=256, context=64, head_dim=64, blocks=(Block(64, 1.0, 1, 1),))
    art = export(card, "executorch", "fp32", tmp_path / "e", cache_len=16, verify=False).artifact
    args = ("bench", str(art), "--device", A, "--device", B, "--prompt", "4", "--generate", "4",
            "--repeat", "2", "--workspace", str(ws.root))
    code, out, err = run_cli(monkeypatch, capsys, *args, "--cluster", "auto", "--json")
    assert code == 0, err
    devs = json.loads(out)["devices"]
    assert set(devs) == {A, B}
    ms = {m.id: m for m in read_measurements(ws.state)}
    for name, rep in devs.items():
        assert rep["device"] == name and rep["decode_ms_per_token"]["median"] > 0
        m = ms[rep["measurement_id"]]
        assert (m.device, m.fingerprint) == (name, rep["fingerprint"]["key"])
    assert devs[A]["fingerprint"]["key"] != devs[B]["fingerprint"]["key"]  # 2 and 1 threads
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "needs a fleet" in err and len(err.strip().splitlines()) == 1


def fleet_card(name: str, depth: int):
    """A tiny card of the fleet space's shape: vocab 256, one block of width 64."""
    from merino_mobile.card import Block, Card

    return Card(name, vocab=256, context=64, head_dim=64, blocks=(Block(64, 1.0, 1, depth),))


def test_two_cards_compared_on_two_phones_at_once(tmp_path, first, ray_cluster, phones,
                                                  monkeypatch, capsys):
    """`compare --device A --device B --cluster auto`: the cards exported once on the driver,
    each phone benches both side by side, each phone's measurements stored under its name."""
    from merino_mobile.card import save_card
    from merino_mobile.latency.store import read_measurements

    ws = Workspace.resolve(tmp_path / "ws")
    shutil.copytree(first[0].root, ws.root)
    for name, depth in (("fleet-one", 1), ("fleet-two", 2)):
        save_card(fleet_card(name, depth), ws.models / f"{name}.json")
    code, out, err = run_cli(monkeypatch, capsys, "compare", "fleet-one", "fleet-two",
                             "--device", A, "--device", B, "--cluster", "auto",
                             "--quant", "fp32", "--prompt", "4", "--generate", "4",
                             "--repeat", "2", "--rounds", "1", "--workspace", str(ws.root),
                             "--json")
    assert code == 0, err
    devs = json.loads(out)["devices"]
    assert set(devs) == {A, B}
    fingerprints = set()
    for name, r in devs.items():
        assert r["device"] == name and [row["card"] for row in r["rows"]] == ["fleet-one",
                                                                             "fleet-two"]
        assert Path(r["out_dir"], "compare.json").is_file()
        stored_here = read_measurements(ws.state, device=name)
        assert sorted(m.card_name for m in stored_here) == ["fleet-one", "fleet-two"]
        assert all(m.tag == "side-by-side" and m.decode_median_ms > 0 for m in stored_here)
        assert len({m.fingerprint for m in stored_here}) == 1
        fingerprints |= {m.fingerprint for m in stored_here}
        assert f"{name}: " in err  # its own progress lines
    assert len(fingerprints) == 2  # each phone's own (2 and 1 threads)
    # both phones run the same format and quantization: each card exported once, into the
    # first phone's compare folder, and benched from there by both
    assert len(list((ws.root / "build").glob("compare-*/*/artifact/model.pte"))) == 2
    assert not list((ws.root / "build" / f"compare-{B}-executorch-fp32").glob("*/artifact"))


def test_design_verify_on_two_phones_at_once(tmp_path, first, ray_cluster, phones,
                                             monkeypatch, capsys):
    """`design --verify --device A --device B --cluster auto`: a loop per phone against its own
    table, a card per phone (a given --name gets the phone's name), each with its measurement."""
    from merino_mobile.card import load_card

    ws = Workspace.resolve(tmp_path / "ws")
    shutil.copytree(first[0].root, ws.root)
    args = ("design", "--latency", "1000ms", "--space", "fleet-tiny", "--context", "16",
            "--quant", "fp32", "--verify", "--iterations", "1", "--name", "fleet-card",
            "--device", A, "--device", B, "--cluster", "auto", "--workspace", str(ws.root))
    code, out, err = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    devs = json.loads(out)["devices"]
    assert set(devs) == {A, B}
    reused = []
    for name, d in devs.items():
        assert Path(d["card"]) == ws.models / f"fleet-card-{name}.json"
        v = d["verify"]
        assert v["device"] == name and v["status"] == "within_budget"
        (it,) = v["iterations"]
        assert it["measured_ms"] > 0 and d["lut"]["device"] == name
        card = load_card(Path(d["card"]))
        assert card.name == f"fleet-card-{name}"
        assert card.meta["measured_latency_ms"] == it["measured_ms"]
        assert card.meta["verify"]["device"] == name
        assert len(card.meta["verify"]["iterations"]) == 1
        reused.append(it["reused"]["export"])
    # both tables pick the space's one-layer design: exported once, the other loop reuses it
    assert sorted(reused) == [False, True]
    assert devs[A]["verify"]["measurement_id"] != devs[B]["verify"]["measurement_id"]
    # the table: one row per phone, with its card
    code, out, err = run_cli(monkeypatch, capsys, *args, "--force")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("│ loopback-")]
    assert len(rows) == 2 and all("64x1x1" in r and "kept" in r for r in rows), out
    assert {line for line in out.splitlines() if line.startswith("card ")} == \
        {f"card {n}: {ws.models / f'fleet-card-{n}.json'}" for n in (A, B)}


def test_several_devices_without_a_cluster_are_one_line(tmp_path, monkeypatch, capsys):
    """compare and design --verify with several --device and no fleet: one line, exit code 2,
    before anything is loaded (the devices need not even exist)."""
    monkeypatch.delenv("MERINO_MOBILE_CLUSTER", raising=False)
    for args in (("compare", "one", "two", "--device", A, "--device", B),
                 ("design", "--latency", "10ms", "--verify", "--device", A, "--device", B)):
        code, _, err = run_cli(monkeypatch, capsys, *args, "--workspace", str(tmp_path))
        assert code == 2 and "needs a fleet" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "design", "--latency", "10ms", "--device", A,
                           "--device", B, "--workspace", str(tmp_path))
    assert code == 2 and "add --verify" not in err and "one device per command" in err
    assert len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "design", "--latency", "10ms", "--cluster",
                           "auto", "--workspace", str(tmp_path))
    assert code == 2 and "add --verify" in err and len(err.strip().splitlines()) == 1, err


def test_each_device_of_a_fleet_verify_names_its_own_card():
    from merino_mobile.fleet.deploy import card_name_for

    assert card_name_for(None, None, A, several=True) == (None, None)  # the default names it
    assert card_name_for("c", Path("out/c.json"), A, several=False) == ("c", Path("out/c.json"))
    assert card_name_for("c", Path("out/c.json"), A, several=True) == \
        (f"c-{A}", Path(f"out/c-{A}.json"))
