"""Deploy: bench exported decoders on a device and put them beside the table's predictions.

    bench.py    run an artifact on a device: TTFT, prefill and decode rates, memory
    predict.py  predicted vs measured, and the memory roofline
    deploy.py   export, bench and report one card (`--format/--quant auto` picks the fastest)
    compare.py  several cards benched side by side, ratios to a baseline
    demo.py     the whole loop on this host
    report.py   report.md, compare.md and the plots
"""

from merino_mobile.deploy.bench import BenchReport, bench_artifact, bench_side_by_side
from merino_mobile.deploy.compare import compare
from merino_mobile.deploy.demo import demo
from merino_mobile.deploy.deploy import Deployed, deploy, deploy_dir, export_for_deploy

__all__ = ["BenchReport", "Deployed", "bench_artifact", "bench_side_by_side", "compare", "demo",
           "deploy", "deploy_dir", "export_for_deploy"]
