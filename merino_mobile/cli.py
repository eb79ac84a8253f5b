"""The `merino-mobile` command: a thin typer layer over the Python API, rendered with rich.

Each command parses its options, calls the API, and prints either a rich table or (with --json)
one JSON object on stdout. Expected failures raise UserError and end as one red line on stderr
with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from merino_mobile import accounting
from merino_mobile.card import Card, last_designed, load_card
from merino_mobile.entropy import (
    DEFAULT_EFFECTIVENESS,
    DEFAULT_OBJECTIVE,
    DEFAULT_RHOS,
    DEFAULT_WEIGHTS,
    EntropySettings,
    effectiveness,
    objectives,
)
from merino_mobile.errors import UserError
from merino_mobile.toolchain import quiet_dependencies
from merino_mobile.units import human_bytes, human_count
from merino_mobile.workspace import Workspace

app = typer.Typer(
    help="Design small generative language models for a device, and prove them on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

WorkspaceOpt = typer.Option(
    None, "--workspace", help="Folder holding devices/, search/ and models/ "
    "(default: $MERINO_MOBILE_HOME, else the current directory).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of tables.")


@app.callback()
def _root() -> None:
    """Design small generative language models for a device, and prove them on it."""


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (plain print: rich would wrap long lines)."""
    print(json.dumps(obj, indent=2, default=str))


def resolve_card(ws: Workspace, name: str) -> tuple[Card, Path]:
    """A card given as a path or a name under models/ (workspace first, then shipped)."""
    path = ws.find("models", name, ".json")
    return load_card(path), path


def card_summary(card: Card, context: int, settings: EntropySettings | None = None) -> dict:
    """The accounting numbers every command reports about a card; `entropy` is the value of
    the settings' objective (default: the design's default, merino; None where its table cannot
    score the card), `rho` of its effectiveness."""
    settings = settings or EntropySettings()
    return {
        "name": card.name,
        "params": accounting.params(card),
        "decoder_params": accounting.decoder_params(card),
        "flops_per_token": accounting.flops_per_token(card, context),
        "kv_cache_bytes": accounting.kv_cache_bytes(card, context),
        "weight_bytes": {q: accounting.weight_bytes(card, q) for q in accounting.QUANT_BITS},
        # None where the merino table cannot score the card (`objectives` says why not)
        "entropy": objectives(card, settings)[settings.objective],
        "rho": effectiveness(card, settings.effectiveness),
        "depth": card.depth,
        "context": context,
    }


def blocks_table(card: Card, title: str) -> Table:
    table = Table(title=title)
    for col in ("block", "width", "ffn ratio", "heads", "depth", "shared"):
        table.add_column(col, justify="right")
    for i, b in enumerate(card.blocks):
        table.add_row(str(i), str(b.width), f"{b.ffn_ratio:g}", str(b.heads), str(b.depth),
                      "yes" if b.shared else "no")
    return table


def totals_table(summary: dict) -> Table:
    table = Table(show_header=False, box=None)
    table.add_row("parameters", human_count(summary["params"]))
    table.add_row(f"FLOPs/token @ {summary['context']}", human_count(summary["flops_per_token"]))
    table.add_row(f"KV cache @ {summary['context']} (fp32)", human_bytes(summary["kv_cache_bytes"]))
    table.add_row("weights int8 / fp32", f"{human_bytes(summary['weight_bytes']['int8'])} / "
                  f"{human_bytes(summary['weight_bytes']['fp32'])}")
    return table


RHO_LABELS = {"deepmad": "depth / mean width", "merino": "depth / 16 log2 width"}


@app.command()
def info(
    card: str = typer.Argument(..., help="Card file, or a name under models/ (e.g. opt-350m)."),
    context: int = typer.Option(512, "--context", help="Context length for FLOPs and KV cache."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print the exact accounting of a card: parameters, FLOPs, KV cache, every objective, rho."""
    from merino_mobile.entropy import effectiveness_all, subspace_table

    ws = Workspace.resolve(workspace)
    c, path = resolve_card(ws, card)
    summary = card_summary(c, context) | {"card": str(path), "objectives": objectives(c),
                                          "effectiveness": effectiveness_all(c)}
    if as_json:
        emit_json(summary)
        return
    console.print(blocks_table(c, f"{c.name} ({path})"))
    totals = totals_table(summary)
    for name, value in summary["objectives"].items():
        if value is None:  # merino: its table is unreadable, or does not reach these shapes
            try:
                subspace_table()
                shown = "[yellow]outside its table's shapes[/yellow]"
            except UserError as e:
                shown = f"[yellow]{escape(str(e))}[/yellow]"
        else:
            shown = f"{value:,.0f}" if name == "params" else f"{value:.2f}"
        totals.add_row(f"objective {name}", shown)
    for variant, rho in summary["effectiveness"].items():
        totals.add_row(f"rho {variant} ({RHO_LABELS[variant]})", f"{rho:.4f}")
    console.print(totals)


@app.command("export")
def export_cmd(
    card: str = typer.Argument(..., help="Card file, or a name under models/ (e.g. gpt2)."),
    fmt: str = typer.Option(..., "--format", help="executorch, coreml, onnx or gguf."),
    quant: str = typer.Option(..., "--quant", help="fp32, fp16, int8, int4 or q4_k_m, per "
                              "format (an unsupported pair lists the supported ones)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: "
                                    "build/<card>/<format>-<quant>/ in the workspace)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="safetensors weights "
                                           "(default: random weights; latency does not care)."),
    cache_len: int | None = typer.Option(None, "--cache-len", help="KV cache positions "
                                         "(default: the card's context)."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Export a card's decoder (quantized), run the artifact here and compare it with torch."""
    from merino_mobile.export import check_pair, export

    check_pair(fmt, quant)  # before loading anything heavy
    ws = Workspace.resolve(workspace)
    c, _ = resolve_card(ws, card)
    out_dir = out or ws.root / "build" / c.name / f"{fmt}-{quant}"
    result = export(c, fmt, quant, out_dir, force=force, checkpoint=checkpoint,
                    cache_len=cache_len)
    if as_json:
        emit_json(result.to_json())
    else:
        console.print(export_table(result))
    if result.passed is False:
        raise typer.Exit(1)


def export_table(result: Any) -> Table:
    """An ExportResult as a two-column table: artifact, size, time, verification."""
    v = result.verification
    table = Table(title=f"{result.card} -> {result.format} {result.quant}", show_header=False)
    table.add_row("artifact", str(result.artifact))
    table.add_row("size", human_bytes(result.size_bytes))
    table.add_row("export time", f"{result.export_seconds:.1f} s")
    for key in ("max_rel_err", "cosine_min", "greedy_agreement"):
        if key in v:
            table.add_row(key.replace("_", " "), f"{v[key]:.3g}")
    verdict = {True: "[green]passed[/green]", False: "[red]FAILED[/red]", None: "not run"}
    reason = v.get("criterion") or v.get("reason") or v.get("skipped") or v.get("error", "")
    table.add_row("verification", f"{verdict[v.get('passed')]} {reason}")
    return table


runner_app = typer.Typer(help="The runner binary a phone executes models with.",
                         no_args_is_help=True)
app.add_typer(runner_app, name="runner")


@runner_app.command("build")
def runner_build_cmd(
    ndk: Path = typer.Option(..., "--ndk", help="Android NDK root (r26 or newer)."),
    executorch_src: Path | None = typer.Option(None, "--executorch-src", help="ExecuTorch "
                                               "source checkout, same version as the installed "
                                               "executorch (--runtime executorch)."),
    runtime: str = typer.Option("executorch", "--runtime", help="executorch (executor_runner) "
                                "or llamacpp (llama.cpp's llama-bench, for .gguf artifacts)."),
    llama_cpp_src: Path | None = typer.Option(None, "--llama-cpp-src", help="llama.cpp source "
                                              "checkout (--runtime llamacpp)."),
    out: Path | None = typer.Option(None, "--out", help="Where the runner goes (default: "
                                    "~/.cache/merino-mobile/runner/arm64-v8a/executor_runner)."),
    build_dir: Path | None = typer.Option(None, "--build-dir", help="CMake build folder "
                                          "(default: in the ExecuTorch checkout)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands, run nothing."),
    as_json: bool = JsonOpt,
) -> None:
    """Cross-compile ExecuTorch's executor_runner (XNNPACK) for arm64-v8a phones with CMake, or
    llama.cpp's llama-bench with --runtime llamacpp (docs/phones.md)."""
    from merino_mobile.runner_build import (
        DEFAULT_OUT,
        LLAMA_BENCH_OUT,
        LlamaBenchBuild,
        RunnerBuild,
    )

    if runtime not in ("executorch", "llamacpp"):
        raise UserError(f"--runtime {runtime!r}: runner build makes executorch's executor_runner "
                        f"or llamacpp's llama-bench (ONNX Runtime ships onnxruntime_perf_test)")
    source, flag = ((executorch_src, "--executorch-src") if runtime == "executorch"
                    else (llama_cpp_src, "--llama-cpp-src"))
    if source is None:
        raise UserError(f"--runtime {runtime} needs {flag} DIR, the source checkout to build")
    build: RunnerBuild | LlamaBenchBuild = (
        RunnerBuild(ndk, source, build_dir, out or DEFAULT_OUT) if runtime == "executorch"
        else LlamaBenchBuild(ndk, source, build_dir, out or LLAMA_BENCH_OUT))
    if dry_run:
        if as_json:
            emit_json({"commands": build.commands(), "out": str(build.out),
                       "missing": build.missing()})
        else:
            print(build.script())
        return
    path = build.run(echo=lambda line: err.print(line, highlight=False, soft_wrap=True))
    if as_json:
        emit_json({"commands": build.commands(), "runner": str(path)})
    else:
        key = "runner" if runtime == "executorch" else "llama_bench"
        console.print(f"runner: {path}  (set {key} = \"{path}\" under [adb] in your phone's "
                      "profile, or use the default path the shipped profiles expect)")


@app.command("devices")
def devices_cmd(
    name: str | None = typer.Argument(None, help="A device profile: print its readiness "
                                      "checklist (default: list every profile)."),
    runtime: str | None = typer.Option(None, "--runtime", help="With NAME: the runtime to "
                                       "check the runner of (default: the profile's first)."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List device profiles (devices/*.toml) and whether each is ready now; with NAME, walk
    what that device needs, item by item, and say what fixes the first missing one."""
    from merino_mobile.device import probe
    from merino_mobile.device.profiles import all_profiles

    ws = Workspace.resolve(workspace)
    if name is not None:
        _device_checklist(ws, name, runtime, as_json)
        return
    if runtime is not None:
        raise UserError("--runtime goes with a device name: merino-mobile devices NAME --runtime "
                        f"{runtime}")
    rows = []
    for prof in all_profiles(ws):
        if isinstance(prof, UserError):
            rows.append({"name": None, "error": str(prof), "reachable": False})
            continue
        p = probe(prof)
        rows.append(prof.to_json() | {"reachable": p.reachable, "detail": p.detail})
    if as_json:
        emit_json({"devices": rows})
        return
    table = Table(title=f"devices ({ws.devices} and shipped)")
    for col in ("device", "transport", "threads", "pinned", "reachable"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail")
    mark = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[yellow]unknown[/yellow]"}
    for r in rows:
        if r["name"] is None:
            table.add_row("[red]?[/red]", "", "", "", mark[False], r["error"])
            continue
        table.add_row(r["name"], r["transport"], str(r["threads"]),
                      ",".join(map(str, r["cpus"])) or "-", mark[r["reachable"]], r["detail"])
    console.print(table)


def _device_checklist(ws: Workspace, name: str, runtime: str | None, as_json: bool) -> None:
    """`devices NAME`: every readiness check with its state. Not ready ends with exit code 1
    and the first missing check's line on stderr, the line `profile` or `bench` on that device
    would refuse with (exit code 2 stays for bad input: an unknown device or runtime)."""
    from merino_mobile.device import readiness
    from merino_mobile.device.checklist import blocking_error, report
    from merino_mobile.device.profiles import load_profile
    from merino_mobile.formats import RUNTIMES

    prof = load_profile(ws, name)
    if runtime is not None and runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    checks = readiness(prof, runtime)
    gap = blocking_error(prof.name, checks)
    if as_json:
        emit_json(report(prof.name, checks))
    else:
        table = Table(title=f"{prof.name} ({prof.path})")
        for col in ("check", "state"):
            table.add_column(col, no_wrap=True)
        table.add_column("detail")
        table.add_column("fix")
        mark = {"ok": "[green]ok[/green]", "missing": "[red]missing[/red]",
                "unknown": "[yellow]unknown[/yellow]"}
        for c in checks:
            table.add_row(c.name, mark[c.state], escape(c.detail), escape(c.fix))
        console.print(table)
        if gap is None:
            console.print(f"{prof.name}: ready", highlight=False)
    if gap is not None:
        if not as_json:  # the JSON above says why; no second message on stderr
            err.print(f"[red]not ready:[/red] {escape(str(gap))}", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(1)


@app.command("profile")
def profile_cmd(
    device: list[str] = typer.Option([], "--device", help="Device profile name "
                                     "(devices/*.toml; default host). Repeat it with --cluster "
                                     "to profile several devices at once."),
    runtime: str = typer.Option("executorch", "--runtime", help="executorch or onnxruntime."),
    quant: str = typer.Option("fp32", "--quant", help="fp32, int8 or int4."),
    grid: str = typer.Option("quick", "--grid", help="quick (a subset) or full (every shape)."),
    space: str = typer.Option("default", "--space", help="Search space the grid comes from "
                              "(a file, or a name under search/)."),
    context: list[int] = typer.Option([], "--context", help="Decode context to measure "
                                      "(repeatable; default quick 128 512)."),
    prompt: list[int] = typer.Option([], "--prompt", help="Prefill length to measure "
                                     "(repeatable; default quick 128; 0 = no prefill)."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="Processes exporting side by "
                                    "side before timing starts (default: the usable cores, or "
                                    "$MERINO_MOBILE_JOBS)."),
    passes: int | None = typer.Option(None, "--passes", min=1, help="Times every point is "
                                      "read, pass after pass; the table takes the median "
                                      "(default: the device profile's [measure] passes; host "
                                      "2). Raising it later measures only the new readings."),
    anchors: int | None = typer.Option(None, "--anchors", min=0, help="Whole models of the "
                                       "space to bench inside the profile, interleaved with the "
                                       "micro-benchmarks, so the table starts calibrated "
                                       "(default 4; 0: none; not yet with --cluster)."),
    cluster: str | None = typer.Option(None, "--cluster", help="auto (the fleet this host "
                                       "started) or HOST:PORT of a fleet's head: every --device "
                                       "at once on its node, exports spread over the fleet "
                                       "(default $MERINO_MOBILE_CLUSTER, else none: this "
                                       "process alone). See docs/fleet.md."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure the latency table of a device: micro-benchmarks, stored as they finish.

    Every missing program is exported first (several processes side by side), then the points
    are timed one after the other with nothing else running; an interrupted run continues where
    it stopped. A few whole models of the space (--anchors) are benched among the points, and
    the table's calibration is fitted on them at the end (docs/measurements.md). With
    --cluster, several devices at once on a Ray fleet (docs/fleet.md)."""
    import os

    from merino_mobile.formats import check_runtime_quant
    from merino_mobile.latency.grid import describe_grid, make_grid
    from merino_mobile.latency.profile import run_profile
    from merino_mobile.target import resolve_target

    ws = Workspace.resolve(workspace)
    devices = device or ["host"]
    # without a fleet, nothing of merino_mobile.fleet (nor Ray) is imported
    fleet = (cluster if cluster is not None
             else os.environ.get("MERINO_MOBILE_CLUSTER", "")).strip() or None
    if fleet is not None and jobs is not None:
        raise UserError("--jobs sets this host's export processes; with --cluster the fleet's "
                        "CPUs export (one task per program): leave --jobs out")
    if fleet is None and len(devices) > 1:
        raise UserError(f"--device given {len(devices)} times: profiling several devices at "
                        f"once needs a fleet, --cluster auto (after `merino-mobile fleet "
                        f"start`) or --cluster HOST:PORT; without one, profile one device per "
                        f"command")
    if fleet is not None and anchors:
        raise UserError(f"--anchors {anchors} with --cluster: a fleet profile does not bench "
                        f"anchors yet; profile with --anchors 0 on the fleet, then calibrate "
                        f"each device by benching models on it (`merino-mobile bench`, "
                        f"`design --verify`), or profile one device without --cluster")
    from merino_mobile.latency.anchors import DEFAULT_ANCHORS
    from merino_mobile.space import load_space

    check_runtime_quant(runtime, quant, profiled=True)
    targets = [resolve_target(ws, d, quant=quant, runtime=runtime) for d in devices]
    sp = load_space(ws.find("search", space, ".toml"))
    g = make_grid(sp, grid, context, None if not prompt else [p for p in prompt if p > 0])
    if fleet is None:
        targets[0].check_ready()  # a missing phone is the only line, before the grid's
    if not as_json:
        err.print(describe_grid(g), highlight=False)
    if fleet is not None:
        profile_fleet_cmd(ws, targets, runtime, quant, g, fleet, passes, as_json)
        return
    bar, progress, _ = profile_bar(transient=as_json, json_out=as_json)
    with bar:
        report = run_profile(ws, targets[0], runtime, quant, g, progress=progress, workers=jobs,
                             passes=passes, space=sp,
                             anchors=DEFAULT_ANCHORS if anchors is None else anchors)
    if as_json:
        emit_json(report.to_json())
        return
    print_profile(report, runtime, quant)


def print_profile(report: Any, runtime: str, quant: str) -> None:
    """One device's profile report as the `profile` table, its failed points on stderr."""
    table = Table(title=f"profile {report.device} ({runtime}, {quant})", show_header=False)
    table.add_row("fingerprint", f"{report.fingerprint['cpu']}, {report.fingerprint['cores']} "
                  f"cores, {report.fingerprint['os']}, {runtime} "
                  f"{report.fingerprint['runtime_version']}, {report.fingerprint['threads']} "
                  "threads")
    readings = f" readings, {report.passes} passes" if report.passes > 1 else ""
    table.add_row("points", f"{report.points}{readings} ({report.skipped} already stored, "
                  f"{report.measured} measured now, {report.remeasured} re-measured after drift)")
    drifts = [s for s in report.sentinel if not s["good"]]
    table.add_row("sentinel", f"{len(report.sentinel)} checks, {len(drifts)} drifted")
    table.add_row("time", f"{report.wall_s:.0f} s (export {report.export_s:.0f} s)")
    if report.anchors or report.anchors_stored:
        shown = ", ".join(f"{a['card']} {a['decode_ms']:.3g} ms" for a in report.anchors)
        table.add_row("anchors", f"{len(report.anchors)} benched now"
                      + (f" ({shown})" if shown else "")
                      + (f", {report.anchors_stored} already stored" if report.anchors_stored
                         else ""))
    table.add_row("table", str(report.lut))
    cal = report.calibration
    if cal is not None:
        table.add_row("calibration", ("applied: " if cal["applied"] else "not applied: ")
                      + escape(cal["reason"]))
    table.add_row("failed", f"[red]{len(report.failed)}[/red]" if report.failed else "0")
    console.print(table)
    for f in report.failed:
        err.print(f"[red]failed:[/red] {f}", highlight=False, soft_wrap=True)


def profile_fleet_cmd(ws: Workspace, targets: list[Any], runtime: str, quant: str, grid: Any,
                      cluster: str, passes: int | None, as_json: bool) -> None:
    """`profile --cluster`: every device at once on the fleet, one progress line each.

    One device prints what `profile` prints without a fleet (the same table, the same JSON
    object). Several print a table each, or with --json one object whose `devices` maps each
    name to its report or to {"error": ...}; a device that failed is one line on stderr and the
    exit code 2, after the others finished."""
    from merino_mobile.fleet import profile_fleet

    bar, progress = fleet_bars([t.name for t in targets], transient=as_json, json_out=as_json)
    with bar:
        r = profile_fleet(ws, targets, runtime, quant, grid, cluster=cluster, progress=progress,
                          passes=passes)
    if len(targets) == 1:
        name = targets[0].name
        if name in r.errors:
            raise UserError(r.errors[name])
        if as_json:
            emit_json(r.reports[name].to_json())
        else:
            print_profile(r.reports[name], runtime, quant)
        return
    if as_json:
        emit_json(r.to_json())
    else:
        for name in r.order:
            if name in r.reports:
                print_profile(r.reports[name], runtime, quant)
        e = r.exports
        console.print(f"fleet: {e.built} programs exported on {len(e.to_json()['by_node'])} "
                      f"nodes in {e.seconds:.0f} s, {e.cached} reused; {r.wall_s:.0f} s in all",
                      highlight=False)
    for name in r.order:
        if name in r.errors:
            err.print(f"[red]error:[/red] {escape(r.errors[name])}", highlight=False,
                      soft_wrap=True)
    if r.errors:
        raise typer.Exit(2)


def fleet_bars(names: list[str], transient: bool = False, json_out: bool = False
               ) -> tuple[Any, Any]:
    """One progress line per device (and one for the fleet's exports): a rich bar each on a
    terminal, else plain prefixed lines (on stderr with --json), as `profile_bar`. Returns the
    context to run in and the fleet's `progress(device or None, message, done, total)`."""
    if not (console.is_terminal and err.is_terminal):
        from contextlib import nullcontext

        from merino_mobile.progress import LineProgress

        out = err if json_out else console

        def writer(prefix: str) -> Any:
            return LineProgress(lambda line: out.print(f"{prefix}: {line}", highlight=False,
                                                       soft_wrap=True))

        lines = {name: writer(name) for name in names}
        lines[None] = writer("fleet")

        def plain(device: str | None, message: str, done: int, total: int) -> None:
            lines[device](message, done, total)

        return nullcontext(), plain
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}", style="cyan"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=transient)
    tasks = {name: bar.add_task(f"{name}: waiting", total=1) for name in ["fleet", *names]}

    def rich_progress(device: str | None, message: str, done: int, total: int) -> None:
        name = device or "fleet"
        bar.update(tasks[name], description=f"{name}: {message}"[:60], completed=done,
                   total=max(total, 1))

    return bar, rich_progress


def profile_bar(transient: bool = False, json_out: bool = False) -> tuple[Any, Any, Console]:
    """A rich progress bar on stderr, the `progress(message, done, total)` that drives it, and
    the console to print messages to while it runs: one bar per phase of a profile (the exports,
    then the points; a phase has its own total). When the output is not a terminal (a log),
    plain periodic lines instead: on stdout, or on stderr with --json (`json_out`), whose stdout
    is one JSON object."""
    if not (console.is_terminal and err.is_terminal):
        from contextlib import nullcontext

        from merino_mobile.progress import LineProgress

        out = err if json_out else console
        lines = LineProgress(lambda line: out.print(line, highlight=False, soft_wrap=True))
        return nullcontext(), lines, out
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}", style="cyan"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn(), console=err, transient=transient)
    task, task_total = None, -1

    def progress(message: str, done: int, total: int) -> None:
        nonlocal task, task_total
        if task is None or total != task_total:
            if task is not None:
                bar.update(task, completed=task_total)
            task, task_total = bar.add_task(message[:48], total=max(total, 1)), total
        bar.update(task, description=message[:48], completed=done, total=max(total, 1))

    return bar, progress, bar.console


@app.command("design")
def design_cmd(
    latency: str | None = typer.Option(None, "--latency", help="Time per generated token on the "
                                       "device, e.g. 50ms or 0.05s; a range 10ms:100ms:10ms "
                                       "sweeps and plots the Pareto frontier."),
    flops: str | None = typer.Option(None, "--flops", help="FLOPs per generated token, e.g. 2G."),
    params: str | None = typer.Option(None, "--params", help="Parameters, e.g. 60M (a range "
                                      "20M:100M:20M sweeps)."),
    memory: str | None = typer.Option(None, "--memory", help="Weights (at --quant) plus KV cache "
                                      "at --context, e.g. 200MB or 1.5GiB."),
    devices: list[str] = typer.Option([], "--device", help="Device whose latency table bounds "
                                      "--latency (default: $MERINO_MOBILE_DEVICE, else host). "
                                      "Repeat it with --verify --cluster to design and measure "
                                      "on several devices at once."),
    runtime: str | None = typer.Option(None, "--runtime", help="Runtime of the latency table "
                                       "(default: the device profile's first runtime)."),
    quant: str = typer.Option("int8", "--quant", help="Weight format the model ships in: picks "
                              "the latency table and the weight bytes of --memory."),
    context: int = typer.Option(512, "--context", help="Context length at which a token is "
                                "generated (latency, FLOPs, KV cache)."),
    space: str = typer.Option("default", "--space", help="Search space file, or a name under "
                              "search/."),
    solver: str = typer.Option("exact", "--solver", help="exact (proven optimum), ea (the "
                               "paper's evolutionary baseline) or brute (small spaces)."),
    objective: str = typer.Option(DEFAULT_OBJECTIVE, "--objective", help="What to maximize: "
                                  "merino (MeRino's subspace entropy), deepmad (sum of log "
                                  "widths) or params (decoder parameters); the default's "
                                  "design trained best of the three, see docs/experiments.md."),
    effectiveness: str = typer.Option(DEFAULT_EFFECTIVENESS, "--effectiveness", help="The rho "
                                      "bounded by --rho: merino (depth / 16 log2 mean width) "
                                      "or deepmad (depth / mean width)."),
    rho: float | None = typer.Option(None, "--rho", help="Effectiveness bound rho <= rho_0 "
                                     f"(default {DEFAULT_RHOS['merino']} for --effectiveness "
                                     f"merino, {DEFAULT_RHOS['deepmad']} for deepmad)."),
    alpha_mha: float | None = typer.Option(None, "--alpha-mha", help="Weight of the attention "
                                           "term of the entropy objectives (MeRino's alpha_1; "
                                           "default 1)."),
    alpha_ffn: float | None = typer.Option(None, "--alpha-ffn", help="Weight of the FFN term of "
                                           "the entropy objectives (MeRino's alpha_2; default "
                                           f"{DEFAULT_WEIGHTS['merino'][1]:g} for merino, 1 for "
                                           "deepmad)."),
    penalty: float = typer.Option(0.0, "--penalty", help="MeRino's penalty on large rho: lower "
                                  "the objective by this much per unit of deficit on the rho "
                                  "row from --penalty-rho (default 0: none; docs/design.md)."),
    penalty_rho: float | None = typer.Option(None, "--penalty-rho", help="With --penalty: the "
                                             "rho (of --effectiveness) above which it lowers "
                                             "the objective; below --rho to act."),
    ea_seconds: float = typer.Option(2.0, "--ea-seconds", help="Time given to --solver ea."),
    seed: int = typer.Option(0, "--seed", help="Seed of --solver ea."),
    name: str | None = typer.Option(None, "--name", help="Name of the card (default: from the "
                                    "budgets)."),
    out: Path | None = typer.Option(None, "--out", help="Card file to write (default: "
                                    "models/<name>.json; for a sweep, the PNG plot)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    verify: bool = typer.Option(False, "--verify", help="Export and bench the design on the "
                                "device; while its measured latency exceeds --latency, refit "
                                "the calibration and redesign (docs/deploy.md)."),
    iterations: int | None = typer.Option(None, "--iterations", help="Designs --verify may "
                                          "measure (default 3)."),
    cluster: str | None = typer.Option(None, "--cluster", help="With --verify: auto or "
                                       "HOST:PORT of a fleet's head, every --device at once on "
                                       "its node (default $MERINO_MOBILE_CLUSTER, else none). "
                                       "See docs/fleet.md."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Find the decoder of maximum entropy within the budgets and write its architecture card.
    With --verify --cluster, one card per device, designed and measured on all at once."""
    from merino_mobile.design import SOLVERS, design_card, read_budgets, sweep
    from merino_mobile.entropy import EFFECTIVENESS, OBJECTIVES
    from merino_mobile.space import load_space
    from merino_mobile.target import design_table

    ws = Workspace.resolve(workspace)
    if solver not in SOLVERS:
        raise UserError(f"unknown --solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if objective not in OBJECTIVES:
        raise UserError(f"unknown --objective {objective!r}; choose one of "
                        f"{', '.join(OBJECTIVES)}")
    if effectiveness not in EFFECTIVENESS:
        raise UserError(f"unknown --effectiveness {effectiveness!r}; choose one of "
                        f"{', '.join(EFFECTIVENESS)}")
    settings = EntropySettings(a=alpha_mha, b=alpha_ffn, rho=rho, objective=objective,
                               effectiveness=effectiveness, penalty=penalty,
                               penalty_rho=penalty_rho)
    given, swept = read_budgets(latency, flops, params, memory)
    check_verify(given, verify, iterations)
    fleet = check_design_devices(devices, verify, cluster)
    device = devices[0] if devices else None
    sp = load_space(ws.find("search", space, ".toml"))
    table, table_info = None, None
    if "latency_ms" in given and not verify:  # --verify opens the device before the table
        table, table_info = design_table(ws, device, runtime, quant)
    chosen = {"objective": objective, "effectiveness": effectiveness, "rho_0": settings.rho,
              "penalty": penalty, "penalty_rho": penalty_rho}
    options = {"seconds": ea_seconds, "seed": seed} if solver == "ea" else {}
    if swept:
        result = sweep(sp, given, swept, settings, context, quant, table, solver, options)
        plot = out or ws.root / "build" / f"pareto-{swept}.png"
        if plot.exists() and not force:
            raise UserError(f"{plot} exists; pass --force to replace it or --out for another file")
        result.plot(plot)
        if as_json:
            emit_json(result.to_json() | {"plot": str(plot), "lut": table_info} | chosen)
            return
        console.print(result.table())
        console.print(f"plot: {plot}")
        return
    verified = None
    if verify and fleet is not None:
        from merino_mobile.target import default_device_name

        names = devices or [default_device_name()]
        r = run_verify_fleet(ws, sp, given, settings, context, names, fleet, runtime, quant,
                             solver, options, name, out, force, iterations, as_json)
        if len(names) > 1:
            print_verify_fleet(r, context, chosen, settings, as_json)
            return
        if names[0] in r.errors:
            if names[0] in r.unmet and not as_json:
                console.print(verify_table(r.unmet[names[0]]))
            raise UserError(r.errors[names[0]])
        verified = r.results[names[0]]
    elif verify:
        verified = run_verify(ws, sp, given, settings, context, device, runtime, quant, solver,
                              options, name, out, force, iterations, as_json)
    if verified:
        d, card, path, table_info = (verified.design, verified.card, verified.path,
                                     verified.lut)
    else:
        d, card, path = design_card(ws, sp, given, settings, context, quant, table, solver,
                                    options, name=name, out=out, force=force,
                                    lut_info=table_info)
    if as_json:
        emit_json(design_result_json(d, card, path, context, chosen, table_info, settings,
                                     verified))
        return
    console.print(blocks_table(card, f"{card.name}: maximum {objective} objective within "
                               f"{describe_budgets(given)}"))
    totals = totals_table(card_summary(card, context, settings))
    totals.add_row(f"objective {objective}" + (" less its rho penalty" if penalty else ""),
                   f"{d.metrics.entropy:,.2f}")
    if penalty:
        from merino_mobile.entropy import rho_deficit

        deficit = rho_deficit(card, effectiveness, settings.penalty_rho)
        totals.add_row(f"rho penalty (gamma {penalty:g} from rho {settings.penalty_rho:g})",
                       f"{penalty * deficit:,.2f}")
    totals.add_row(f"rho {effectiveness} ({RHO_LABELS[effectiveness]}; bound {settings.rho:g})",
                   f"{d.metrics.rho:.4f}")
    if d.metrics.latency_ms is not None:
        totals.add_row(f"predicted latency @ {context}", f"{d.metrics.latency_ms:.2f} ms "
                       f"({table_info['device']}, {table_info['runtime']}, {table_info['quant']})")
    totals.add_row(f"memory ({quant} weights + KV)", human_bytes(d.metrics.memory))
    gap = f", gap {d.solver.gap:.1e}" if d.solver.gap is not None else ""
    totals.add_row("solver", f"{d.solver.name}: {d.solver.seconds:.2f} s, "
                   f"{'proven optimal' if d.solver.optimal else 'not proven optimal'}{gap}")
    if verified:
        totals.add_row(f"measured latency @ {context}", escape(verified.message))
    totals.add_row("card", str(path))
    console.print(totals)
    if verified:
        console.print(verify_table(verified))


def design_result_json(d: Any, card: Card, path: Path | None, context: int, chosen: dict,
                       table_info: dict | None, settings: EntropySettings,
                       verified: Any = None) -> dict:
    """The `design --json` object of one design: `design_json`, the settings chosen, the table
    (`lut`), every objective, and with --verify the loop (`verify`)."""
    return (design_json(d, card, path, context) | chosen
            | {"lut": table_info, "objectives": objectives(card, settings)}
            | ({"verify": verified.to_json()} if verified else {}))


def check_design_devices(devices: list[str], verify: bool, cluster: str | None) -> str | None:
    """The fleet `design --verify` runs on (None: this process alone); several --device need
    --verify and a fleet, --cluster needs --verify (refused before anything is solved)."""
    if not verify:
        if cluster is not None:
            raise UserError("--cluster runs the benches of --verify on a fleet; add --verify "
                            "(a design without it measures nothing)")
        if len(devices) > 1:
            raise UserError(f"--device given {len(devices)} times: a design is bounded by one "
                            f"device's table; `design --verify --cluster auto` designs and "
                            f"measures a card for each of several devices at once; without "
                            f"--verify, design for one device per command")
        return None
    return fleet_for(cluster, devices, "verifying on", "verify on")


def run_verify_fleet(ws: Workspace, sp: Any, given: dict, settings: EntropySettings,
                     context: int, names: list[str], cluster: str, runtime: str | None,
                     quant: str, solver: str, options: dict, name: str | None,
                     out: Path | None, force: bool, iterations: int | None,
                     as_json: bool) -> Any:
    """`design --verify --cluster`: the loop on every device at once
    (`merino_mobile.fleet.deploy.verify_fleet`), one progress line per device."""
    from merino_mobile.deploy.verify import DEFAULT_ITERATIONS
    from merino_mobile.fleet.deploy import verify_fleet

    bar, progress = fleet_lines(names, as_json)
    with bar:
        return verify_fleet(
            ws, sp, given, settings, context, names, cluster=cluster, runtime=runtime,
            quant=quant, solver=solver, options=options, name=name, out=out, force=force,
            iterations=DEFAULT_ITERATIONS if iterations is None else iterations,
            progress=progress)


def print_verify_fleet(r: Any, context: int, chosen: dict, settings: EntropySettings,
                       as_json: bool) -> None:
    """Several devices' `design --verify`: a row per device (its design, predicted and measured
    ms per token, iterations, how the loop ended), then each card's file; or with --json one
    object whose `devices` maps each name to its `design --json` object or to {"error": ...}.
    A failed device (a budget not met included) is one line on stderr and exit code 2."""
    from merino_mobile.deploy.verify import blocks_label
    from merino_mobile.design import format_budget
    from merino_mobile.fleet.run import SCHEMA_VERSION

    if as_json:
        devices = {n: design_result_json(v.design, v.card, v.path, context, chosen, v.lut,
                                         settings, v)
                   if (v := r.results.get(n)) else {"error": r.errors[n]} for n in r.order}
        emit_json({"schema_version": SCHEMA_VERSION, "devices": devices, "wall_s": r.wall_s})
    shown = {n: r.results.get(n) or r.unmet.get(n) for n in r.order}
    if not as_json and any(shown.values()):
        budget = next(v for v in shown.values() if v).budget_ms
        table = Table(title=f"--verify on {sum(map(bool, shown.values()))} devices at once: "
                      f"budget {format_budget('latency_ms', budget)}",
                      caption="ms per token at the chosen design (* predicted by a calibrated "
                      "table); a budget not met shows the fastest design measured")
        for col in ("device", "design", "predicted", "measured", "iterations", "ending"):
            table.add_column(col, justify="right" if col in ("predicted", "measured",
                                                             "iterations") else "left")
        for n, v in shown.items():
            if v is None:
                continue
            c = v.chosen
            table.add_row(escape(n), escape(blocks_label(c.load_card())),
                          f"{c.predicted_ms:.3g}" + ("*" if c.calibrated else ""),
                          f"{c.measured_ms:.3g}", str(len(v.iterations)),
                          STATUS_WORDS.get(v.status, v.status))
        console.print(table)
        for n, v in shown.items():
            if v is not None and v.path is not None:
                console.print(f"card {n}: {v.path}", highlight=False, soft_wrap=True)
    print_fleet_errors(r.order, r.errors)


def check_verify(given: dict, verify: bool, iterations: int | None) -> None:
    """--verify needs one --latency value; --iterations needs --verify (refused before anything
    is solved)."""
    if iterations is not None and not verify:
        raise UserError("--iterations counts the designs --verify measures; add --verify")
    if verify:
        from merino_mobile.deploy.verify import verify_budget

        verify_budget(given)


def run_verify(ws: Workspace, sp: Any, given: dict, settings: EntropySettings, context: int,
               device: str | None, runtime: str | None, quant: str, solver: str, options: dict,
               name: str | None, out: Path | None, force: bool, iterations: int | None,
               as_json: bool) -> Any:
    """`design --verify`: the loop (merino_mobile.deploy.verify), its progress on stderr; when
    no design keeps the budget, the iterations table before the error line."""
    from merino_mobile.deploy.verify import DEFAULT_ITERATIONS, BudgetNotMet, verify_design

    try:
        return verify_design(
            ws, sp, given, settings, context, device=device, runtime=runtime, quant=quant,
            solver=solver, options=options, name=name, out=out, force=force,
            iterations=DEFAULT_ITERATIONS if iterations is None else iterations,
            say=lambda m: err.print(f"[cyan]verify:[/cyan] {escape(m)}", highlight=False,
                                    soft_wrap=True))
    except BudgetNotMet as e:
        if not as_json:
            console.print(verify_table(e.result))
        raise


def verify_table(r: Any) -> Table:
    """The iterations of `design --verify`: design, predicted, measured, one row each."""
    from merino_mobile.design import format_budget

    table = Table(title=f"--verify on {r.device}: budget {format_budget('latency_ms', r.budget_ms)}"
                  f", {STATUS_WORDS.get(r.status, r.status)}",
                  caption="ms per token; predicted by the device's table then (* calibrated)")
    for col in ("#", "how", "design", "params", "solved at", "predicted", "measured",
                "median 90%", "p10-p90", ""):
        table.add_column(col, justify="left" if col in ("how", "design", "") else "right")
    for it in r.iterations:
        done = it.measured_ms is not None
        verdict = "" if not done else (
            "[green]within[/green]" if it.measured_ms <= r.budget_ms else "[red]over[/red]")
        table.add_row(str(it.index), it.how, escape(it.summary()["architecture"]),
                      human_count(it.params), f"{it.solve_budget_ms:.3g}",
                      f"{it.predicted_ms:.3g}" + ("*" if it.calibrated else ""),
                      f"{it.measured_ms:.3g}" if done else "-",
                      f"{it.median_lo_ms:.3g}-{it.median_hi_ms:.3g}"
                      if done and it.median_lo_ms is not None else "-",
                      f"{it.p10_ms:.3g}-{it.p90_ms:.3g}" if done else "-",
                      verdict + (" (chosen)" if r.chosen is it else ""))
    return table


STATUS_WORDS = {"within_budget": "kept", "within_noise": "kept within its median's noise",
                "unmet": "not met by the space", "spent": "not met in the iterations allowed"}


def describe_budgets(given: dict) -> str:
    from merino_mobile.design import format_budget as _fmt

    return ", ".join(f"{k} {_fmt(k, v)}" for k, v in given.items())


def design_json(d: Any, card: Card, path: Path | None, context: int) -> dict:
    """The `design --json` object (keys are a contract: see docs/design.md)."""
    m = d.metrics
    return {
        # a v2 card's FFN kind and K/V heads, only where it has them (v1 JSON unchanged)
        "architecture": [{"width": b.width, "ffn_ratio": b.ffn_ratio, "heads": b.heads,
                          "depth": b.depth, "shared": b.shared}
                         | ({"ffn": b.ffn, "kv_heads": b.n_kv_heads} if card.schema_version > 1
                            else {}) for b in card.blocks],
        "entropy": m.entropy,
        "rho": m.rho,
        "depth": m.depth,
        "params": m.params,
        "flops_per_token": m.flops,
        "kv_cache_bytes": m.kv_cache_bytes,
        "memory_bytes": m.memory,
        "predicted_latency_ms": m.latency_ms,
        "context": context,
        "solver": {"name": d.solver.name, "seconds": d.solver.seconds,
                   "optimal": d.solver.optimal, "gap": d.solver.gap,
                   "evaluated": d.solver.evaluated},
        "card": str(path) if path else None,
    }


@app.command("bench")
def bench_cmd(
    artifact: Path = typer.Argument(..., help="An exported model: model.pte, model.onnx or "
                                    "model.mlpackage (merino-mobile export / deploy)."),
    devices: list[str] = typer.Option([], "--device", help="Device profile name "
                                      "(devices/*.toml; default host). Repeat it with "
                                      "--cluster to bench several devices at once."),
    prompt: int = typer.Option(128, "--prompt", help="Prompt tokens of the prefill (pp)."),
    generate: int = typer.Option(128, "--generate", help="Generated tokens of the decode (tg)."),
    repeat: int = typer.Option(5, "--repeat", help="Timed runs (median and p10/p90 over them)."),
    cluster: str | None = typer.Option(None, "--cluster", help="auto or HOST:PORT of a fleet's "
                                       "head: every --device at once on its node (default "
                                       "$MERINO_MOBILE_CLUSTER, else none). See docs/fleet.md."),
    llm_runner: bool = typer.Option(False, "--llm-runner", help="Also run a .pte through "
                                    "ExecuTorch's own LLM runner (TextLLMRunner) on this host "
                                    "and report its statistics beside (docs/deploy.md)."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure an exported model on a device: load, time to first token, prefill and decode
    tokens/s, peak memory, size (a llama-bench style table). Every bench is stored in the
    workspace (`merino-mobile measurements`)."""

    from merino_mobile.deploy.bench import bench_artifact, llama_bench_table
    from merino_mobile.deploy.text import llm_runner_stats

    ws = Workspace.resolve(workspace)
    names = devices or ["host"]
    fleet = fleet_for(cluster, names, "benching", "bench")
    if fleet is not None:
        bench_fleet_cmd(ws, artifact, names, fleet, prompt, generate, repeat, as_json)
        return
    device = names[0]
    if llm_runner and (device != "host" or Path(artifact).suffix != ".pte"):
        raise UserError("--llm-runner runs a .pte with ExecuTorch's LLM runner on this host: "
                        "give a model.pte and --device host (or leave the flag out)")
    r = bench_artifact(ws, artifact, device, prompt=prompt, generate=generate, repeat=repeat)
    runner = llm_runner_stats(ws, artifact, prompt, generate) if llm_runner else None
    if as_json:
        emit_json(r.to_json() | ({"llm_runner": runner} if runner else {}))
        return
    console.print(llama_bench_table([r], f"{artifact} on {device}"))
    extra = Table(show_header=False, box=None)
    extra.add_row("time to first token", f"{r.ttft_ms.median:.2f} ms [{r.ttft_ms.p10:.2f}, "
                  f"{r.ttft_ms.p90:.2f}] for {r.prompt} tokens")
    extra.add_row("decode", f"{r.decode_ms_per_token.median:.3f} ms/token")
    extra.add_row("load", "-" if r.load_ms is None else f"{r.load_ms:.1f} ms")
    extra.add_row("peak RSS", "-" if r.peak_rss_bytes is None else human_bytes(r.peak_rss_bytes))
    extra.add_row("device", r.fingerprint.get("cpu", "") + f" ({r.fingerprint.get('os', '')})")
    if runner:
        rate = runner["decode_tokens_per_s"]
        extra.add_row("ExecuTorch LLM runner", f"first token {runner['ttft_ms']:.0f} ms for "
                      f"{runner['prompt_tokens']} tokens, decode "
                      + ("-" if rate is None else f"{rate:.1f} tokens/s")
                      + f" over {runner['new_tokens']} tokens (its own clock, whole ms)")
    console.print(extra)


def bench_fleet_cmd(ws: Workspace, artifact: Path, names: list[str], cluster: str, prompt: int,
                    generate: int, repeat: int, as_json: bool) -> None:
    """`bench --cluster`: every device at once on the fleet; one table row per device, a failed
    device one line on stderr and exit code 2 after the others finished."""
    from merino_mobile.deploy.bench import rate
    from merino_mobile.fleet import bench_fleet

    bar, progress = fleet_bars(names, transient=as_json, json_out=as_json)
    with bar:
        r = bench_fleet(ws, artifact, names, cluster=cluster, prompt=prompt, generate=generate,
                        repeat=repeat, progress=progress)
    if as_json:
        emit_json(r.to_json())
    elif r.reports:
        table = Table(title=f"{artifact} on {len(r.reports)} devices at once")
        for col in ("device", f"pp{prompt} t/s", f"tg{generate} t/s", "decode ms/token",
                    "TTFT ms", "threads"):
            table.add_column(col)
        for n in r.order:
            if n in r.reports:
                b = r.reports[n]
                table.add_row(n, rate(b.prefill_tokens_per_s), rate(b.decode_tokens_per_s),
                              f"{b.decode_ms_per_token.median:.3f}", f"{b.ttft_ms.median:.2f}",
                              str(b.threads))
        console.print(table)
    for name in r.order:
        if name in r.errors:
            err.print(f"[red]error:[/red] {escape(name)}: {escape(r.errors[name])}",
                      highlight=False, soft_wrap=True)
    if r.errors:
        raise typer.Exit(2)


@app.command("generate")
def generate_cmd(
    artifact: Path = typer.Argument(..., help="An exported model: model.pte, model.onnx or "
                                    "model.gguf (merino-mobile export / deploy)."),
    prompt: str = typer.Option(..., "--prompt", help="The text to continue."),
    tokens: int = typer.Option(32, "--tokens", help="New tokens to generate."),
    device: str = typer.Option("host", "--device", help="Device profile name; the artifact runs "
                               "on this host (a phone's runner reports timings, not text)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="tokenizer.json (default: "
                                          "the one beside the artifact, else bytes for a "
                                          "256-token vocabulary)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample from the k likeliest tokens "
                                     "(default: greedy)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (with --top-k)."),
    llm_runner: bool = typer.Option(False, "--llm-runner", help="Run a .pte through ExecuTorch's "
                                    "own LLM runner (TextLLMRunner, as llama_main and its "
                                    "Android demo app do) and report its statistics."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Continue a prompt with an exported model, run by its own runtime: the text, time to first
    token and decode tokens/s (docs/deploy.md, "Text and perplexity")."""
    from merino_mobile.deploy.text import generate_text

    ws = Workspace.resolve(workspace)
    g = generate_text(ws, artifact, prompt, device=device, new_tokens=tokens,
                      tokenizer=tokenizer, top_k=top_k, seed=seed, llm_runner=llm_runner)
    if as_json:
        emit_json(g.to_json())
        return
    console.print(escape(g.prompt) + "[bold]" + escape(g.text) + "[/bold]", highlight=False,
                  soft_wrap=True)
    rate = "-" if g.decode_tokens_per_s is None else f"{g.decode_tokens_per_s:.1f} tokens/s"
    err.print(f"{g.runtime}: {g.prompt_tokens} prompt tokens, first token {g.ttft_ms:.1f} ms, "
              f"{g.new_tokens} new tokens, decode {rate}", highlight=False)


@app.command("eval")
def eval_cmd(
    artifact: Path = typer.Argument(..., help="An exported model: model.pte, model.onnx or "
                                    "model.gguf."),
    corpus: str = typer.Option(..., "--corpus", help="A text file, a folder of text files, or a "
                               "built-in corpus (stdlib, prose): its held-out split is scored."),
    tokens: int = typer.Option(2048, "--tokens", help="Tokens to score at most."),
    device: str = typer.Option("host", "--device", help="Device profile name; the artifact runs "
                               "on this host."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="tokenizer.json (default: "
                                          "the one beside the artifact, else bytes)."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Perplexity of an exported model on the held-out text of a corpus, one decode step per
    token with the artifact's own runtime (compare fp32, int8 and int4 exports of one
    checkpoint to see what the quantization costs)."""
    from merino_mobile.deploy.text import evaluate_text

    ws = Workspace.resolve(workspace)
    e = evaluate_text(ws, artifact, corpus, device=device, max_tokens=tokens,
                      tokenizer=tokenizer)
    if as_json:
        emit_json(e.to_json())
        return
    table = Table(title=f"eval {artifact}", show_header=False)
    table.add_row("runtime", f"{e.runtime} ({e.quant or 'unknown'} quantization)")
    table.add_row("corpus", f"{e.corpus} (held-out split)")
    table.add_row("scored", f"{e.tokens_scored} tokens in {e.windows} window(s), "
                  f"{e.seconds:.1f} s")
    table.add_row("loss", f"{e.nll_per_token:.4f} nats/token")
    table.add_row("perplexity", f"{e.perplexity:.3f}")
    console.print(table)


@app.command("train")
def train_cmd(
    card: str = typer.Argument(..., help="Card file, or a name under models/."),
    corpus: str = typer.Option(..., "--corpus", help="A text file, a folder of text files, or a "
                               "built-in corpus: stdlib (Python sources) or prose (English)."),
    tokens: int = typer.Option(1_000_000, "--tokens", help="Training tokens (steps = tokens / "
                               "(batch x seq))."),
    seq: int = typer.Option(256, "--seq", help="Tokens per training window."),
    batch: int = typer.Option(8, "--batch", help="Windows per step."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (warmup, then cosine)."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Steps between "
                                         "checkpoints (an interrupted run loses at most these)."),
    seed: int = typer.Option(0, "--seed", help="Initial weights and batch order."),
    tokenizer: str = typer.Option("bytes", "--tokenizer", help="bytes (vocab 256), bpe (train "
                                  "a byte-level BPE of the card's vocab on the corpus, kept in "
                                  "the run folder) or a local tokenizer.json of the card's vocab."),
    out: Path | None = typer.Option(None, "--out", help="Run folder: checkpoints, resumed when "
                                    "present (default: build/<card>/train in the workspace)."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a card's decoder on CPU; report validation loss and perplexity; resumable."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from merino_mobile.corpus import load_split, tokenizer_for
    from merino_mobile.train import TrainConfig, train

    ws = Workspace.resolve(workspace)
    c, _ = resolve_card(ws, card)
    run_dir = out or ws.root / "build" / c.name / "train"
    tok = tokenizer_for(c.name, c.vocab, tokenizer, corpus, run_dir)
    config = TrainConfig(tokens=tokens, seq=seq, batch=batch, lr=lr,
                         checkpoint_every=checkpoint_every, seed=seed)
    config.check()
    data = load_split(corpus, tok)
    bar = Progress(TextColumn("[cyan]train[/cyan]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:,.0f} tok/s  loss {task.fields[loss]:.3f}"),
                   TimeRemainingColumn(), console=err, transient=as_json)
    task = bar.add_task("train", total=config.steps, rate=0.0, loss=float("nan"))

    def progress(step: int, steps: int, loss: float, rate: float) -> None:
        bar.update(task, completed=step, loss=loss, rate=rate)

    with bar:
        result = train(c, data, config, run_dir, progress)
    if as_json:
        emit_json(result.to_json())
        return
    table = Table(title=f"train {c.name} on {data.source}", show_header=False)
    table.add_row("tokens", f"{data.train.numel():,} train / {data.val.numel():,} validation")
    table.add_row("steps", f"{result.steps} ({result.start_step} from the checkpoint)")
    if result.train_loss is not None:
        table.add_row("train loss", f"{result.train_loss:.4f}")
    table.add_row("validation loss", f"{result.val_loss:.4f} nats/token")
    table.add_row("perplexity", f"{result.val_ppl:.2f}")
    table.add_row("speed", f"{result.tokens_per_s:,.0f} tokens/s")
    table.add_row("checkpoint", str(result.checkpoint))
    console.print(table)


@app.command("import")
def import_cmd(
    folder: Path = typer.Argument(..., help="A local Hugging Face model folder (config.json, "
                                  "*.safetensors, tokenizer.json) of the llama, qwen2, opt or "
                                  "gpt2 family."),
    name: str | None = typer.Option(None, "--name", help="Card name (default: the folder's "
                                    "name, lowercased): models/NAME.json."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier import of that name."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Turn a Hugging Face model folder into a card (models/NAME.json) and a checkpoint
    (build/NAME/import/model.safetensors, with its tokenizer.json); nothing is downloaded."""
    from merino_mobile.hf_import import import_folder

    ws = Workspace.resolve(workspace)
    r = import_folder(folder, ws, name=name, force=force)
    if as_json:
        emit_json(r.to_json())
        return
    console.print(blocks_table(r.card, f"{r.card.name}: imported {r.family} from {folder}"))
    table = Table(show_header=False, box=None)
    c, b = r.card, r.card.blocks[0]
    table.add_row("layers", f"{b.depth} x width {b.width}, {b.heads} heads ({b.n_kv_heads} K/V), "
                  f"{b.ffn} FFN {b.ffn_hidden}, {c.norm}, {c.positions} positions")
    table.add_row("parameters", human_count(accounting.params(c)))
    table.add_row("card", str(r.card_path))
    table.add_row("checkpoint", str(r.checkpoint))
    table.add_row("tokenizer", str(r.tokenizer) if r.tokenizer else "none in the folder")
    console.print(table)


@app.command("deploy")
def deploy_cmd(
    card: str | None = typer.Argument(None, help="Card file, or a name under models/ (default: "
                                      "the card the last `design` wrote in this workspace)."),
    device: str = typer.Option("host", "--device", help="Device profile name (devices/*.toml)."),
    fmt: str | None = typer.Option(None, "--format", help="executorch, onnx, coreml or auto "
                                   "(default: the device's first runtime)."),
    quant: str = typer.Option("int8", "--quant", help="fp32, int8, int4 or auto."),
    prompt: int = typer.Option(128, "--prompt", help="Prompt tokens of the prefill."),
    generate: int = typer.Option(128, "--generate", help="Generated tokens of the decode."),
    repeat: int = typer.Option(5, "--repeat", help="Timed runs per phase."),
    no_predict: bool = typer.Option(False, "--no-predict", help="Skip the latency table."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier report."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="safetensors weights "
                                           "(train / import) instead of random ones."),
    corpus: str | None = typer.Option(None, "--corpus", help="With --checkpoint: perplexity of "
                                      "the artifact on this corpus's held-out split against "
                                      "the fp32 model's (what the quantization costs)."),
    eval_tokens: int = typer.Option(512, "--eval-tokens", help="Tokens --corpus scores."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Export a card, run it on a device, and write a report with measured vs predicted numbers
    (build/<card>/<device>-<format>-<quant>/); with --checkpoint and --corpus, also what the
    quantization costs in perplexity."""
    from merino_mobile.deploy import deploy
    from merino_mobile.deploy.bench import llama_bench_table

    ws = Workspace.resolve(workspace)
    if card is None:
        last = last_designed(ws.models)
        if last is None:
            raise UserError(f"no card to deploy: `design` has written none in {ws.models} yet; "
                            f"run `merino-mobile design --latency 50ms` first, or name a card "
                            f"(`merino-mobile info` lists the shipped ones)")
        c, path = last
        err.print(f"deploying {c.name}, the last design ({path})", highlight=False,
                  soft_wrap=True)
    else:
        c, _ = resolve_card(ws, card)
    done = deploy(ws, c, device, fmt, quant, prompt=prompt, generate=generate, repeat=repeat,
                  force=force, predict_latency=not no_predict, command=" ".join(sys.argv[1:]),
                  checkpoint=checkpoint, corpus=corpus, eval_tokens=eval_tokens)
    if as_json:
        emit_json(done.to_json())
        return
    r = done.report
    console.print(llama_bench_table([done.bench],
                                    f"{c.name} on {device} ({r['format']}, {r['quant']})"))
    pred = r.get("prediction") or {}
    for phase in ("decode", "prefill"):
        p = pred.get(phase)
        if p:
            flag = " [red]> 10%[/red]" if p["flagged"] else ""
            console.print(f"{phase} @ {p['length']}: predicted {p['predicted_ms']:.3g} ms, "
                          f"measured {p['measured_ms']:.3g} ms ({p['error_pct']:+.1f}%){flag}")
    if not pred.get("decode"):
        console.print(f"no prediction: {pred.get('reason')}", highlight=False)
    ppl = r.get("perplexity")
    if ppl:
        console.print(f"perplexity ({ppl['tokens_scored']} held-out tokens of {ppl['corpus']}): "
                      f"{ppl['perplexity']:.3f} ({r['quant']}) vs {ppl['fp32_perplexity']:.3f} "
                      f"(fp32), {ppl['perplexity_increase_pct']:+.2f}%", highlight=False)
    for w in r["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    console.print(f"report: {Path(r['out_dir']) / 'report.md'}")


@app.command("compare")
def compare_cmd(
    cards: list[str] = typer.Argument(..., help="Cards to compare (files or names)."),
    devices: list[str] = typer.Option([], "--device", help="Device profile name (default "
                                      "host). Repeat it with --cluster to compare on several "
                                      "devices at once."),
    fmt: str | None = typer.Option(None, "--format", help="executorch, onnx or coreml."),
    quant: str = typer.Option("int8", "--quant", help="fp32, int8 or int4."),
    baseline: str | None = typer.Option(None, "--baseline", help="Card the ratios are against "
                                        "(default: the last one)."),
    prompt: int = typer.Option(128, "--prompt", help="Prompt tokens of the prefill."),
    generate: int = typer.Option(128, "--generate", help="Generated tokens of the decode."),
    repeat: int = typer.Option(5, "--repeat", help="Timed runs per phase in each round."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds: each benches every card "
                               "once, in reverse order every other round."),
    no_predict: bool = typer.Option(False, "--no-predict", help="Skip the latency table."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier compare.json."),
    cluster: str | None = typer.Option(None, "--cluster", help="auto or HOST:PORT of a fleet's "
                                       "head: every --device at once on its node (default "
                                       "$MERINO_MOBILE_CLUSTER, else none). See docs/fleet.md."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Bench several cards side by side on one device, runtime and quantization: speedup and
    size ratios from measurements taken together (build/compare-<device>-<format>-<quant>/).
    With --cluster, on several devices at once (docs/fleet.md)."""
    from merino_mobile.deploy import compare

    ws = Workspace.resolve(workspace)
    names = devices or ["host"]
    fleet = fleet_for(cluster, names, "comparing on", "compare on")
    loaded = [resolve_card(ws, c)[0] for c in cards]
    base = resolve_card(ws, baseline)[0].name if baseline else None
    settings = {"baseline": base, "prompt": prompt, "generate": generate, "repeat": repeat,
                "rounds": rounds, "force": force, "predict_latency": not no_predict,
                "command": " ".join(sys.argv[1:])}
    if fleet is not None:
        compare_fleet_cmd(ws, loaded, names, fleet, fmt, quant, settings, as_json)
        return
    r = compare(ws, loaded, names[0], fmt, quant, **settings,
                say=lambda m: err.print(f"[cyan]compare:[/cyan] {escape(m)}", highlight=False,
                                        soft_wrap=True))
    r.pop("reports")  # each card's report is in its folder; --json prints compare.json's object
    print_compare(r, as_json)


def compare_table(r: dict) -> Table:
    """One device's compare: a row per card, its speed and size against the baseline."""
    table = Table(title=f"{r['device']} ({r['format']}, {r['quant']}), baseline {r['baseline']}")
    for col in ("card", "params", "size", "TTFT ms", "decode t/s", "speedup", "size ratio"):
        table.add_column(col, justify="left" if col == "card" else "right")
    for row in r["rows"]:
        table.add_row(row["card"], human_count(row["params"]), human_bytes(row["size_bytes"]),
                      f"{row['ttft_ms']:.2f}", f"{row['decode_tokens_per_s']:.2f}",
                      f"{row['speedup']:.2f}x", f"{row['size_ratio']:.2f}x")
    return table


def print_compare(r: dict, as_json: bool) -> None:
    """One device's compare.json object: printed as it is (--json), or its table and files."""
    if as_json:
        emit_json(r)
        return
    console.print(compare_table(r))
    console.print(f"plot: {r['plot']}\nreport: {Path(r['out_dir']) / 'compare.md'}")


def fleet_address(cluster: str | None) -> str | None:
    """The fleet a command runs on: --cluster, else $MERINO_MOBILE_CLUSTER, else None (this
    process alone; nothing of the fleet, nor Ray, is imported)."""
    import os

    return (cluster if cluster is not None
            else os.environ.get("MERINO_MOBILE_CLUSTER", "")).strip() or None


def fleet_for(cluster: str | None, devices: list[str], doing: str, verb: str) -> str | None:
    """`fleet_address`, refusing several devices without a fleet (`doing`: "benching", `verb`:
    "bench": the words of the one-line error)."""
    fleet = fleet_address(cluster)
    if fleet is None and len(devices) > 1:
        raise UserError(f"--device given {len(devices)} times: {doing} several devices at once "
                        f"needs a fleet, --cluster auto (after `merino-mobile fleet start`) or "
                        f"--cluster HOST:PORT; without one, {verb} one device per command")
    return fleet


def fleet_lines(names: list[str], json_out: bool) -> tuple[Any, Any]:
    """One progress line per device for a fleet's compare or verify, whose steps are messages
    (exporting, bench round 2 of 3, iteration 1: measured ...): a rich bar each on a terminal,
    else every message as a plain `device: message` line on stderr."""
    if console.is_terminal and err.is_terminal:
        return fleet_bars(names, transient=json_out, json_out=json_out)
    from contextlib import nullcontext

    def plain(device: str | None, message: str, done: int, total: int) -> None:
        err.print(f"{escape(device or 'fleet')}: {escape(message)}", highlight=False,
                  soft_wrap=True)

    return nullcontext(), plain


def print_fleet_errors(order: list[str], errors: dict[str, str]) -> None:
    """Each failed device's one line on stderr, in the order given; exit code 2 if any."""
    for name in order:
        if name in errors:
            err.print(f"[red]error:[/red] {escape(name)}: {escape(errors[name])}",
                      highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(2)


def compare_fleet_cmd(ws: Workspace, cards: list[Card], names: list[str], cluster: str,
                      fmt: str | None, quant: str, settings: dict, as_json: bool) -> None:
    """`compare --cluster`: every device at once on the fleet. One device prints what `compare`
    prints without a fleet; several print each device's table, or with --json one object whose
    `devices` maps each name to its compare.json object or to {"error": ...}; a failed device
    is one line on stderr and exit code 2, after the others finished."""
    from merino_mobile.fleet.deploy import compare_fleet

    bar, progress = fleet_lines(names, as_json)
    with bar:
        r = compare_fleet(ws, cards, names, cluster=cluster, fmt=fmt, quant=quant,
                          progress=progress, **settings)
    if len(names) == 1:
        if names[0] in r.errors:
            raise UserError(r.errors[names[0]])
        print_compare(r.to_json()["devices"][names[0]], as_json)
        return
    if as_json:
        emit_json(r.to_json())
    else:
        for one in r.to_json()["devices"].values():
            if "error" not in one:
                print_compare(one, as_json=False)
    print_fleet_errors(r.order, r.errors)


@app.command("demo")
def demo_cmd(
    reduced: bool = typer.Option(False, "--reduced", help="Tiny grid, tiny space and card, no "
                                 "comparison (what the tests run)."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="Processes exporting side by "
                                    "side while profiling (default: the usable cores)."),
    space: str = typer.Option("default", "--space", help="Search space (search/<name>.toml): "
                              "default, or mobilellm (Llama-style layers; compared with "
                              "MobileLLM-125M)."),
    compare_with: str | None = typer.Option(None, "--compare", help="The card the design is "
                                            "budgeted from and benched beside (default: "
                                            "opt-350m; mobilellm-125m for --space mobilellm)."),
    speedup: float = typer.Option(4.0, "--speedup", help="The design's budget is the compared "
                                  "card's predicted latency over this."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The whole loop on this host: profile (exporting OPT-350M beside the micro-benchmarks),
    design for a quarter of OPT-350M's predicted latency, deploy with ExecuTorch int8, bench,
    and compare with OPT-350M. About 15 minutes on a 2-core machine; a second run reuses the
    latency table and the exports."""
    from merino_mobile.deploy import demo

    ws = Workspace.resolve(workspace)
    bar, progress, out = profile_bar(transient=True, json_out=as_json)
    with bar:
        r = demo(ws, reduced=reduced, space=space, compare_card=compare_with, speedup=speedup,
                 workers=jobs, progress=progress,
                 say=lambda m: out.print(f"[cyan]demo:[/cyan] {escape(m)}", highlight=False,
                                         soft_wrap=True))
    if as_json:
        emit_json(r)
        return
    if r["compare"]:
        console.print(compare_table(r["compare"]))
    steps = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in r["steps"].items())
    console.print(f"designed {r['card']} for {r['budget_ms']:.3g} ms/token ({r['budget_rule']})")
    console.print(f"time: {steps}")
    console.print(f"report: {r['report']}")


@app.command("measurements")
def measurements_cmd(
    device: str = typer.Option("host", "--device", help="Device profile name (devices/*.toml)."),
    runtime: str | None = typer.Option(None, "--runtime", help="Only this runtime."),
    quant: str | None = typer.Option(None, "--quant", help="Only this quantization."),
    fingerprint: str | None = typer.Option(None, "--fingerprint", help="Only this fingerprint "
                                           "key (the key of a latency table's fingerprint)."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the whole-model measurements stored for a device: every bench, deploy and compare
    of a model on it, with the table's prediction at the time (the calibration's data)."""
    from merino_mobile.latency.store import Store, read_measurements

    ws = Workspace.resolve(workspace)
    rows = read_measurements(ws.state, device=device, runtime=runtime, quant=quant,
                             fingerprint=fingerprint)
    if as_json:
        emit_json({"device": device, "store": str(ws.state / "profile.db"),
                   "measurements": [m.to_json() for m in rows]})
        return
    if not rows:
        console.print(f"no whole-model measurements of {device!r} in {ws.state / 'profile.db'}"
                      f" (with these filters): `merino-mobile bench`, `deploy` and `compare` "
                      f"record every model they measure")
        return
    store = Store.open(ws.state)
    try:
        setups = {m.fingerprint: store.fingerprint(m.fingerprint) for m in rows}
    finally:
        store.close()
    console.print(f"whole-model measurements of {device} in {ws.state / 'profile.db'}, by "
                  f"setup (one table's calibration data each); predicted: by the device's "
                  f"table at the time, * calibrated")
    for key, runtime_, quant_ in dict.fromkeys((m.fingerprint, m.runtime, m.quant) for m in rows):
        fp = setups[key]
        table = Table(title=f"{runtime_} {quant_}, fingerprint {key}"
                      + (f": {fp.describe()}" if fp else ""))
        for col in ("id", "date", "card", "ctx", "ms/token", "predicted", "error", "tag"):
            table.add_column(col, no_wrap=col == "card", justify="right" if col in (
                "id", "ctx", "ms/token", "predicted", "error") else "left")
        for m in rows:
            if (m.fingerprint, m.runtime, m.quant) != (key, runtime_, quant_):
                continue
            pred = m.calibrated_ms if m.calibrated_ms is not None else m.predicted_ms
            shown, error = "-", "-"
            if pred is not None:
                shown = f"{pred:.3f}" + ("*" if m.calibrated_ms is not None else "")
                error = f"{100 * (pred - m.decode_median_ms) / m.decode_median_ms:+.1f}%"
            table.add_row(str(m.id), m.measured_at[5:16].replace("T", " "), m.card_name or "-",
                          str(m.context), f"{m.decode_median_ms:.3f}", shown, error, m.tag)
        console.print(table)


@app.command("calibrate")
def calibrate_cmd(
    device: str = typer.Option("host", "--device", help="Device profile name (devices/*.toml)."),
    runtime: str | None = typer.Option(None, "--runtime", help="Runtime of the latency table "
                                       "(default: the device profile's first runtime)."),
    quant: str = typer.Option("int8", "--quant", help="Quantization of the latency table."),
    measurement: list[int] | None = typer.Option(None, "--measurement", help="Fit on exactly "
                                                 "these measurement ids (repeatable; default: "
                                                 "every one of the table's fingerprint)."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Fit the device table's calibration on its stored whole-model measurements and write it
    beside the table: one factor for every term group (`scale`) or a factor per group
    (`groups`), validated leave-one-model-out; a fit applies only where it predicts the held-out
    models consistently better than the simpler choice (a paired t-test at 95%)."""
    from merino_mobile.latency.calibration import GROUPS, calibrate
    from merino_mobile.target import resolve_target

    ws = Workspace.resolve(workspace)
    target = resolve_target(ws, device, quant=quant, runtime=runtime)
    cal, path = calibrate(target, measurement or None)
    if as_json:
        emit_json(cal.to_json() | {"file": str(path)})
        return
    table = Table(title=f"calibration of {cal.table_source}")
    fits = {m: c["factors"] for m, c in cal.candidates.items()}
    for col in ("group", "terms", "factor", *(f"fit: {m}" for m in fits)):
        table.add_column(col, justify="left" if col in ("group", "terms") else "right")
    for g, what in GROUPS.items():
        table.add_row(g, what, f"{cal.factors[g]:.3f}", *(f"{f[g]:.3f}" for f in fits.values()))
    console.print(table)
    used = f"{len(cal.measurement_ids)} measurement(s) of {cal.models} model(s)"
    if cal.skipped:
        used += f"; {len(cal.skipped)} not used ({cal.skipped[0]['reason']}" + (
            ", ..." if len(cal.skipped) > 1 else "") + ")"
    console.print(f"data: {used}")
    if cal.loo_mape_pct:
        tried = "".join(f", {m} {c['loo_mape_pct']:.1f}%" for m, c in cal.candidates.items()
                        if c["loo_mape_pct"] is not None)
        console.print(f"leave-one-model-out MAPE: raw {cal.loo_mape_pct['raw']:.1f}%{tried}")
    verdict = "[green]applied[/green]" if cal.applied else "[yellow]not applied[/yellow]"
    console.print(f"{verdict}: {escape(cal.reason)}")
    console.print(f"written: {path}")


fleet_app = typer.Typer(help="A device fleet on Ray: hosts that share their devices and CPUs "
                        "(docs/fleet.md).", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")


@fleet_app.command("start")
def fleet_start_cmd(
    address: str | None = typer.Option(None, "--address", help="HOST:PORT of the fleet's head "
                                       "to join (default: this host becomes the head)."),
    node_ip: str | None = typer.Option(None, "--node-ip-address", help="This host's address "
                                       "on the network the fleet's hosts share (default "
                                       "127.0.0.1: a fleet of this host alone, reachable from "
                                       "nowhere else)."),
    port: int = typer.Option(6379, "--port", min=1, max=65535, help="The head's port."),
    device: list[str] = typer.Option([], "--device", help="Declare these devices (repeatable; "
                                     "default: every profile this host reaches now)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run; start nothing."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Join this host to the fleet (or start it): declare the devices it reaches, `ray start`."""
    from merino_mobile.fleet import plan_start, start

    ws = Workspace.resolve(workspace)
    plan = plan_start(ws, address=address, node_ip=node_ip, port=port, devices=device or None)
    record = None if dry_run else start(plan)
    if as_json:
        emit_json(plan.to_json() | {"started": record is not None})
        return
    table = Table(title=f"fleet {'head' if plan.head else 'node'} at {plan.address}")
    for col in ("device", "declared", "detail"):
        table.add_column(col)
    for row in plan.devices:
        table.add_row(row["name"], "[green]yes[/green]" if row["declared"] else "no",
                      row["detail"])
    console.print(table)
    if dry_run:
        env = " ".join(f"{k}={v}" for k, v in plan.env.items())
        print(f"{env} {' '.join(plan.command)}")
        return
    console.print(f"started; profile with `merino-mobile profile --device NAME ... --cluster "
                  f"{'auto' if plan.head else plan.address}`", highlight=False)
    if plan.head and not plan.address.startswith("127."):
        console.print(f"other hosts join with `merino-mobile fleet start --address "
                      f"{plan.address} --node-ip-address THEIR_ADDRESS`, after copying "
                      f"~/.ray/auth_token to them", highlight=False)


@fleet_app.command("status")
def fleet_status_cmd(
    cluster: str | None = typer.Option(None, "--cluster", help="auto or HOST:PORT (default "
                                       "$MERINO_MOBILE_CLUSTER, else auto)."),
    as_json: bool = JsonOpt,
) -> None:
    """The fleet's nodes, the devices each has, and what each device is doing."""
    from merino_mobile.fleet import cluster_from, status

    s = status(cluster_from(cluster) or "auto")
    if as_json:
        emit_json(s)
        return
    table = Table(title="fleet")
    for col in ("node", "cpus", "device", "doing", "for", "driver"):
        table.add_column(col)
    for node in s["nodes"]:
        label = f"{node['hostname']} ({node['address']}){' head' if node['head'] else ''}"
        rows = node["devices"] or [{"name": "-", "doing": "", "for_s": None, "driver": None}]
        for i, d in enumerate(rows):
            table.add_row(label if i == 0 else "", f"{node['cpus']:g}" if i == 0 else "",
                          d["name"], d["doing"], "" if d["for_s"] is None else f"{d['for_s']} s",
                          d["driver"] or "")
    console.print(table)
    if s["dead_nodes"]:
        err.print(f"{s['dead_nodes']} node(s) of this fleet are dead", highlight=False)


@fleet_app.command("stop")
def fleet_stop_cmd(as_json: bool = JsonOpt) -> None:
    """Leave the fleet: `ray stop` on this host (every Ray process of this host ends)."""
    from merino_mobile.fleet import stop

    r = stop()
    if as_json:
        emit_json(r)
    else:
        console.print(f"stopped the fleet's processes on this host"
                      f"{' (' + r['address'] + ')' if r['address'] else ''}", highlight=False)


def main() -> None:
    """Console-script entry point: runs the app, turning UserError into one clear line."""
    quiet_dependencies()
    try:
        app()
    except UserError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
