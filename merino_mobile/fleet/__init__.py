"""A device fleet on Ray: several devices on several hosts profiled (or benched) at once, exports
spread over the cluster, every measurement committed by the driver to the one store (docs/fleet.md).

Nothing here is imported unless a command is given `--cluster` (or $MERINO_MOBILE_CLUSTER) or runs
`merino-mobile fleet`; Ray itself is imported only by `cluster.import_ray`. `fleet.deploy` (compare
and design --verify on several devices) is imported by those commands only, not from here: it
loads the deploy stage.
"""

from merino_mobile.fleet.cluster import CLUSTER_ENV, cluster_from, connect, device_resource
from merino_mobile.fleet.control import plan_start, start, status, stop
from merino_mobile.fleet.exports import ExportReport, ProgramJob, export_missing
from merino_mobile.fleet.remote import RemoteDevice, WorkerLost
from merino_mobile.fleet.run import (
    FleetBench,
    FleetReport,
    FleetTarget,
    bench_fleet,
    profile_fleet,
)

__all__ = ["CLUSTER_ENV", "ExportReport", "FleetBench", "FleetReport", "FleetTarget",
           "ProgramJob", "RemoteDevice", "WorkerLost", "bench_fleet", "cluster_from", "connect",
           "device_resource", "export_missing", "plan_start", "profile_fleet", "start", "status",
           "stop"]
