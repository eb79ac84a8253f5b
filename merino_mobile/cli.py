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
from rich.table import Table

from merino_mobile import accounting
from merino_mobile.card import Card, load_card
from merino_mobile.entropy import EntropySettings, effectiveness, entropy
from merino_mobile.errors import UserError
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


def card_summary(card: Card, context: int, settings: EntropySettings = EntropySettings()) -> dict:
    """The accounting numbers every command reports about a card."""
    return {
        "name": card.name,
        "params": accounting.params(card),
        "decoder_params": accounting.decoder_params(card),
        "flops_per_token": accounting.flops_per_token(card, context),
        "kv_cache_bytes": accounting.kv_cache_bytes(card, context),
        "weight_bytes": {q: accounting.weight_bytes(card, q) for q in accounting.QUANT_BITS},
        "entropy": entropy(card, settings),
        "rho": effectiveness(card),
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
    table.add_row("entropy", f"{summary['entropy']:.2f}")
    table.add_row("rho (depth / mean width)", f"{summary['rho']:.4f}")
    return table


@app.command()
def info(
    card: str = typer.Argument(..., help="Card file, or a name under models/ (e.g. opt-350m)."),
    context: int = typer.Option(512, "--context", help="Context length for FLOPs and KV cache."),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print the exact accounting of a card: parameters, FLOPs, KV cache, entropy, rho."""
    ws = Workspace.resolve(workspace)
    c, path = resolve_card(ws, card)
    summary = card_summary(c, context) | {"card": str(path)}
    if as_json:
        emit_json(summary)
        return
    console.print(blocks_table(c, f"{c.name} ({path})"))
    console.print(totals_table(summary))


@app.command("export")
def export_cmd(
    card: str = typer.Argument(..., help="Card file, or a name under models/ (e.g. gpt2)."),
    fmt: str = typer.Option(..., "--format", help="executorch, coreml or onnx."),
    quant: str = typer.Option(..., "--quant", help="fp32, fp16, int8 or int4 (per format)."),
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
    executorch_src: Path = typer.Option(..., "--executorch-src", help="ExecuTorch source "
                                        "checkout, same version as the installed executorch."),
    out: Path | None = typer.Option(None, "--out", help="Where the runner goes (default: "
                                    "~/.cache/merino-mobile/runner/arm64-v8a/executor_runner)."),
    build_dir: Path | None = typer.Option(None, "--build-dir", help="CMake build folder "
                                          "(default: in the ExecuTorch checkout)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands, run nothing."),
    as_json: bool = JsonOpt,
) -> None:
    """Cross-compile ExecuTorch's executor_runner (XNNPACK) for arm64-v8a phones with CMake."""
    from merino_mobile.runner_build import DEFAULT_OUT, RunnerBuild

    build = RunnerBuild(ndk, executorch_src, build_dir, out or DEFAULT_OUT)
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
        console.print(f"runner: {path}  (set runner = \"{path}\" under [adb] in your phone's "
                      "profile, or use the default path the shipped profiles expect)")


def main() -> None:
    """Console-script entry point: runs the app, turning UserError into one clear line."""
    try:
        app()
    except UserError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
