"""`merino-mobile fleet start | status | stop`: a host joins the fleet, the fleet says what it is
doing, a host leaves.

`start` declares on this host the custom resource of every device profile it reaches now
(`device:<name>`; a profile of this host itself, transport local or coreml, only on the head,
since every host would reach "host"; `--device` names them instead), then runs `ray start`:
`--head` (the first host), or `--address HEAD:PORT` (every other one). Without
`--node-ip-address` the fleet is this host alone and listens on the loopback only; with it, Ray
listens on that address, where the other hosts reach it. It records the fleet's address
(`cluster.record_path()`) for `--cluster auto`.

`status` lists the live nodes, the devices each declares, and for each device what its actor is
doing (idle when none runs). `stop` is `ray stop` on this host: every Ray process of this host
ends, any device's run on it with `WorkerLost`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merino_mobile.errors import UserError
from merino_mobile.files import utc_now, write_json
from merino_mobile.fleet.cluster import (
    DEFAULT_PORT,
    DEVICE_RESOURCE,
    INSTALL_HINT,
    LOOPBACK,
    NAMESPACE,
    connect,
    device_resource,
    is_loopback,
    ray_installed,
    read_record,
    record_path,
    split_address,
)
from merino_mobile.workspace import Workspace

HOST_TRANSPORTS = ("local", "coreml")  # profiles of the host itself: every host reaches one


def ray_command() -> list[str]:
    """The `ray` CLI of this Python (the one whose workers import merino_mobile)."""
    script = Path(sys.executable).with_name("ray")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


@dataclass
class StartPlan:
    """What `fleet start` will run, and why each device is or is not declared."""

    command: list[str]
    env: dict[str, str]
    address: str
    head: bool
    resources: dict[str, float]
    devices: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "env": self.env, "address": self.address,
                "head": self.head, "resources": self.resources, "devices": self.devices}


def plan_start(ws: Workspace, *, address: str | None = None, node_ip: str | None = None,
               port: int = DEFAULT_PORT, devices: list[str] | None = None) -> StartPlan:
    """The `ray start` command for this host: head unless `address`, the devices it reaches."""
    from merino_mobile.device import probe
    from merino_mobile.device.profiles import all_profiles, load_profile

    head = address is None
    if address is not None:
        split_address(address)
    ip = node_ip or LOOPBACK
    if address is not None and is_loopback(split_address(address)[0]) != is_loopback(ip):
        raise UserError(f"the head listens on {address} and this host would be {ip}: a fleet is "
                        f"either this host alone (loopback) or hosts on one network; give "
                        f"--node-ip-address with this host's address on the head's network")
    rows: list[dict[str, Any]] = []
    if devices:
        profiles: list[Any] = [load_profile(ws, name) for name in devices]
    else:
        profiles = [p for p in all_profiles(ws) if not isinstance(p, UserError)]
    for prof in profiles:
        if not devices and prof.transport in HOST_TRANSPORTS and not head:
            rows.append({"name": prof.name, "declared": False,
                         "detail": "this host's own profile: declared by the head only"})
            continue
        p = probe(prof)
        if devices and p.reachable is not True:
            raise UserError(f"{prof.name} is not reachable from this host ({p.detail}): plug "
                            f"it in here, or leave it out of --device")
        rows.append({"name": prof.name, "declared": p.reachable is True, "detail": p.detail})
    resources = {device_resource(r["name"]): 1.0 for r in rows if r["declared"]}
    cmd = [*ray_command(), "start"]
    cmd += [f"--port={port}"] if head else [f"--address={address}"]
    if head:
        cmd.append("--head")
    cmd += [f"--node-ip-address={ip}", f"--resources={json.dumps(resources, sort_keys=True)}",
            "--include-dashboard=false", "--disable-usage-stats"]
    env = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    if is_loopback(ip):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # see cluster.py: Ray as 127.0.0.1
    return StartPlan(cmd, env, address or f"{ip}:{port}", head, resources, rows)


def _run(cmd: list[str], env: dict[str, str], what: str, timeout_s: float = 180.0
         ) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=os.environ | env, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} did not finish in {timeout_s:.0f} s: see `ray status`, and "
                        f"/tmp/ray/session_latest/logs") from None


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln or "ailed" in ln] or lines or ["no output"]
    return errors[-1][:300]


def start(plan: StartPlan) -> dict[str, Any]:
    """Run the plan's `ray start` (the head first makes sure the fleet's token exists) and
    record the fleet's address for `--cluster auto`."""
    if not ray_installed():
        raise UserError(f"the fleet runs on Ray, which is not installed here: {INSTALL_HINT}")
    if plan.head:
        _run([*ray_command(), "get-auth-token", "--generate"], plan.env, "ray get-auth-token")
    proc = _run(plan.command, plan.env, "ray start")
    if proc.returncode != 0:
        hint = (" (another fleet runs on this host: `merino-mobile fleet stop` first)"
                if "already" in proc.stderr + proc.stdout else "")
        if "uthentication" in proc.stderr + proc.stdout or "token" in _last_error(proc):
            hint = " (copy the head's ~/.ray/auth_token to this host first)"
        raise UserError(f"ray start failed: {_last_error(proc)}{hint}")
    record = {"address": plan.address, "head": plan.head, "resources": plan.resources,
              "started": utc_now()}
    write_json(record_path(), record)
    return record


def stop() -> dict[str, Any]:
    """`ray stop` on this host, and forget the fleet's address."""
    if not ray_installed():
        raise UserError(f"the fleet runs on Ray, which is not installed here: {INSTALL_HINT}")
    record = read_record()
    proc = _run([*ray_command(), "stop"], {}, "ray stop")
    if proc.returncode != 0:
        raise UserError(f"ray stop failed: {_last_error(proc)}")
    record_path().unlink(missing_ok=True)
    return {"stopped": True, "address": record["address"] if record else None}


def status(cluster: str = "auto") -> dict[str, Any]:
    """The fleet's live nodes, their devices, and what each device's actor is doing."""
    ray = connect(cluster)
    doing: dict[str, dict[str, Any]] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != NAMESPACE or not entry["name"].startswith(DEVICE_RESOURCE):
            continue
        try:
            actor = ray.get_actor(entry["name"], namespace=NAMESPACE)
            state = ray.get(actor.state.remote(), timeout=5.0)
        except Exception:  # ending meanwhile
            continue
        doing[state["device"]] = state
    nodes = []
    dead = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            dead += 1
            continue
        res = node.get("Resources", {})
        devices = []
        for key in sorted(res):
            if not key.startswith(DEVICE_RESOURCE):
                continue
            name = key[len(DEVICE_RESOURCE):]
            st = doing.get(name)
            if st is not None and st["node_id"] != node["NodeID"]:
                st = None  # the same name on two hosts: its actor runs on the other one
            devices.append({"name": name, "doing": st["doing"] if st else "idle",
                            "for_s": st["for_s"] if st else None,
                            "runtime": st["runtime"] if st else None,
                            "driver": st["driver"] if st else None})
        nodes.append({"node_id": node["NodeID"], "address": node["NodeManagerAddress"],
                      "hostname": node.get("NodeManagerHostname", ""),
                      "cpus": res.get("CPU", 0.0), "head": "node:__internal_head__" in res,
                      "devices": devices})
    return {"nodes": nodes, "dead_nodes": dead}
