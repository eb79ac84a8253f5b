"""The Ray cluster a fleet runs on: importing Ray, finding the cluster, and the names in it.

Ray is an optional dependency (`pip install -e ".[fleet]"`): only this module imports it, and only
when a command is given `--cluster` (or `$MERINO_MOBILE_CLUSTER`) or runs `merino-mobile fleet`;
without them nothing here is imported and the local process pool stays the default.

Names in the cluster:

- every device a host reaches is a custom resource `device:<profile name>` of that host's node,
  declared by `merino-mobile fleet start` (`DEVICE_RESOURCE`); the device's actor asks for one
  unit of it, so Ray places it on the node that has the device, and no second actor (of another
  run) can hold the same device at the same time;
- the actors are named `device:<profile name>` in the namespace `merino-mobile`, which is how
  `fleet status` finds them and says what each is doing.

`--cluster auto` is the fleet this host started (`fleet start` records its address in
`record_path()`), else a cluster a plain `ray start` began on this host. A cluster that listens on
the loopback only (`fleet start` without `--node-ip-address`, the tests) needs every process that
joins it to call itself 127.0.0.1: Ray's switch for that is `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
(a single-machine cluster, Ray's default on macOS and Windows), set before Ray is imported.
Fleets use Ray's token authentication (`RAY_AUTH_MODE=token`): the token is `~/.ray/auth_token`
on every host (see docs/fleet.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from merino_mobile.errors import UserError

NAMESPACE = "merino-mobile"
DEVICE_RESOURCE = "device:"
CLUSTER_ENV = "MERINO_MOBILE_CLUSTER"
INSTALL_HINT = 'pip install -e ".[fleet]"'
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 6379


def device_resource(name: str) -> str:
    """The custom resource (and the actor name) of a device profile in the cluster."""
    return f"{DEVICE_RESOURCE}{name}"


def cluster_from(cluster: str | None) -> str | None:
    """`--cluster`, else $MERINO_MOBILE_CLUSTER, else None: no cluster, this process alone."""
    value = cluster if cluster is not None else os.environ.get(CLUSTER_ENV, "")
    return value.strip() or None


def ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def import_ray(loopback: bool = False) -> ModuleType:
    """Ray, imported here only; a UserError naming the extra when it is not installed.

    Before the first import, the environment Ray reads then: token authentication, no usage
    reports (nothing leaves the cluster), and, for a `loopback` cluster, this process as
    127.0.0.1."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if loopback:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UserError(f"the fleet runs on Ray, which is not installed here: {INSTALL_HINT} "
                        f"(on every host of the fleet)") from None
    return ray


# -- where the cluster is -------------------------------------------------------------------------

def record_path() -> Path:
    """Where `fleet start` notes the address of the fleet this host started."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "merino-mobile" / "fleet.json"


def read_record() -> dict[str, Any] | None:
    """The fleet this host started (`fleet start`), or None."""
    try:
        data = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("address"), str) else None


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT of a cluster's head; a UserError naming the accepted forms otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--cluster must be auto or HOST:PORT (the address `merino-mobile fleet "
                        f"start` printed), got {address!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def resolve_address(cluster: str) -> str:
    """The head's HOST:PORT for `cluster` ("auto": this host's fleet), or Ray's own "auto"."""
    if cluster == "auto":
        record = read_record()
        return record["address"] if record else "auto"
    split_address(cluster)
    return cluster


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """A UserError when nothing answers at the head's address: Ray itself would retry for a
    minute or more before giving up."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UserError(f"no Ray cluster answers at {address} ({why}): start the fleet there "
                        f"with `merino-mobile fleet start`, or correct --cluster / "
                        f"${CLUSTER_ENV}") from None


def connect(cluster: str) -> ModuleType:
    """Ray, connected to `cluster` (auto or HOST:PORT) in the fleet's namespace.

    A process connected already (a notebook, a test that started its own cluster) keeps its
    connection."""
    address = resolve_address(cluster)
    loopback = address != "auto" and is_loopback(split_address(address)[0])
    ray = import_ray(loopback=loopback)
    if ray.is_initialized():
        return ray
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.ERROR)
    except ConnectionError as e:
        text = f"{e} {e.__cause__ or ''}"
        if address == "auto":
            raise UserError("no fleet is running on this host: start one with `merino-mobile "
                            "fleet start`, or give --cluster HOST:PORT of a running one") from None
        if "uthentication" in text:
            raise UserError(f"the Ray cluster at {address} refused this host's token: copy the "
                            f"head's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN)") from None
        raise UserError(f"cannot join the Ray cluster at {address} ({_first_line(e)}); is it a "
                        f"fleet head (`merino-mobile fleet status --cluster {address}`)?") from None
    return ray


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def node_devices(ray: ModuleType) -> dict[str, list[dict[str, Any]]]:
    """For each device resource of the cluster's live nodes, those nodes (id, address, host)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for key in node.get("Resources", {}):
            if key.startswith(DEVICE_RESOURCE):
                out.setdefault(key[len(DEVICE_RESOURCE):], []).append(
                    {"node_id": node["NodeID"], "address": node["NodeManagerAddress"],
                     "hostname": node.get("NodeManagerHostname", "")})
    return out


def check_devices_have_nodes(ray: ModuleType, names: list[str]) -> None:
    """A UserError naming the devices no live node of the cluster has."""
    have = node_devices(ray)
    missing = [n for n in names if n not in have]
    if missing:
        listed = ", ".join(sorted(have)) or "none"
        raise UserError(f"no node of the fleet has {', '.join(missing)} (its devices: {listed}): "
                        f"run `merino-mobile fleet start` on the host "
                        f"{'they are' if len(missing) > 1 else 'it is'} plugged into (it declares "
                        f"the devices that host reaches)")
