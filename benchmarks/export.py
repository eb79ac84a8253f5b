"""Export benchmark: time and size of every export, and host decode speed of the .pte files.

For each card (default: gpt2, opt-125m, merino-50m) and each format/quantization this host can
produce (ExecuTorch always; ONNX and Core ML when their modules are present), run
`merino_mobile.export.export` (which also verifies the artifact) and record export seconds and
bytes on disk. Then decode on this host: prefill a prompt, warm up, and time single-token steps of
the ExecuTorch programs (fp32, int8, int4) and of the eager torch model, reporting tokens/s from
the median step time with p10/p90.

    nice python benchmarks/export.py [CARD ...] [--cache-len 512] [--steps 48] [--formats ...]

Writes benchmarks/results/export.json after every row, so an interrupted run keeps what it did.
The KV cache is static: every decode step attends over all cache_len slots, so step time does not
depend on the position.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from merino_mobile.export import FORMATS, export
from merino_mobile.export.executorch import load_method
from merino_mobile.model import build_decoder
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 1
PROMPT_LEN = 32


def decode_timing(step, vocab: int, steps: int, warmup: int = 8) -> dict:
    """Prefill PROMPT_LEN tokens, then time `steps` one-token calls of step(tokens, start).

    Wall time and process CPU time per step are both recorded: with one thread they agree on an
    idle host, and on a shared one the CPU time still measures the work, not the waiting.
    """
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(vocab, 256), (1, PROMPT_LEN), generator=gen)
    step(prompt, torch.tensor([0]))
    wall, cpu = [], []
    for i in range(warmup + steps):
        tok = torch.tensor([[int(i % min(vocab, 256))]])
        w0, c0 = time.perf_counter(), time.process_time()
        step(tok, torch.tensor([PROMPT_LEN + i]))
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    q = statistics.quantiles(wall, n=10)
    return {"tok_s": 1.0 / statistics.median(wall), "ms_p50": 1e3 * statistics.median(wall),
            "ms_p10": 1e3 * q[0], "ms_p90": 1e3 * q[-1],
            "cpu_tok_s": 1.0 / statistics.median(cpu), "cpu_ms_p50": 1e3 * statistics.median(cpu),
            "steps": steps}


def set_threads(n: int) -> None:
    """The same thread count for eager torch and for ExecuTorch's XNNPACK threadpool."""
    from executorch.extension.pybindings import portable_lib

    torch.set_num_threads(n)
    portable_lib._unsafe_reset_threadpool(n)


def available_formats(wanted: list[str]) -> dict[str, str]:
    """Each wanted format -> "" if its module is importable here, else why not."""
    out = {}
    for fmt in wanted:
        spec = importlib.util.find_spec(f"merino_mobile.export.{fmt}")
        out[fmt] = "" if spec else f"merino_mobile.export.{fmt} is not present"
    return out


def host_info(threads: int) -> dict:
    import executorch.version

    return {"machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "executorch": executorch.version.__version__, "python": platform.python_version(),
            "threads": threads, "load_avg_at_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cards", nargs="*", default=["gpt2", "opt-125m", "merino-50m"])
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64, help="timed decode steps per artifact")
    ap.add_argument("--formats", default="executorch,onnx,coreml")
    ap.add_argument("--quants", default="fp32,fp16,int8,int4", help="subset to run")
    ap.add_argument("--build", type=Path, default=HERE / "build")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "export.json")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for eager torch and ExecuTorch (default 1: a shared host)")
    args = ap.parse_args()
    if args.cache_len < PROMPT_LEN + 8 + args.steps:
        ap.error(f"--cache-len must hold the prompt ({PROMPT_LEN}), 8 warm-up and --steps tokens")

    threads = args.threads
    set_threads(threads)
    ws = Workspace.resolve(HERE.parent)
    formats = available_formats(args.formats.split(","))
    report = {"schema_version": SCHEMA_VERSION, "command": " ".join(sys.argv),
              "host": host_info(threads), "cache_len": args.cache_len, "prompt_len": PROMPT_LEN,
              "formats_skipped": {f: why for f, why in formats.items() if why}, "rows": []}
    console = Console(width=150)

    def record(row: dict) -> None:
        report["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(row)

    from merino_mobile.card import load_card

    for name in args.cards:
        card = load_card(ws.find("models", name, ".json"))
        model = build_decoder(card, cache_len=args.cache_len)
        with torch.no_grad():
            eager = decode_timing(model, card.vocab, args.steps)
        record({"card": card.name, "format": "torch eager", "quant": "fp32", "decode": eager})
        for fmt, why in formats.items():
            if why:
                continue
            for quant in [q for q in FORMATS[fmt].quants if q in args.quants.split(",")]:
                out_dir = args.build / card.name / f"{fmt}-{quant}"
                try:
                    res = export(card, fmt, quant, out_dir, force=True, cache_len=args.cache_len)
                except Exception as e:  # a benchmark records a failure and goes on
                    record({"card": card.name, "format": fmt, "quant": quant,
                            "error": f"{type(e).__name__}: {e}"[:500]})
                    continue
                row = {"card": card.name, "format": fmt, "quant": quant,
                       "size_bytes": res.size_bytes, "export_seconds": res.export_seconds,
                       "verification": {k: res.verification.get(k) for k in
                                        ("passed", "max_rel_err", "cosine_min",
                                         "greedy_agreement", "reason")}}
                if fmt == "executorch":
                    method = load_method(res.artifact)
                    row["decode"] = decode_timing(lambda t, s, m=method: m.execute([t, s])[0],
                                                  card.vocab, args.steps)
                record(row)
        del model

    report["host"]["load_avg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = Table(title=f"export benchmark (cache_len {args.cache_len}, host {os.cpu_count()} "
                        f"cpus, {threads} thread(s))")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    rows = [table_row(r) for r in report["rows"]]
    for r in rows:
        table.add_row(*r)
    console.print(table)
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    console.print(f"wrote {args.out}")


COLUMNS = ("card", "format", "quant", "export s", "size MB", "verified", "cosine min",
           "decode tok/s (cpu)", "decode tok/s (wall)", "wall ms p10-p90")


def table_row(r: dict) -> tuple[str, ...]:
    d, v = r.get("decode"), r.get("verification", {})
    verdict = "error" if "error" in r else {True: "yes", False: "NO", None: ""}[v.get("passed")]
    return (r["card"], r["format"], r["quant"],
            f"{r['export_seconds']:.0f}" if "export_seconds" in r else "",
            f"{r['size_bytes'] / 1e6:.1f}" if "size_bytes" in r else "",
            verdict,
            f"{v['cosine_min']:.4f}" if v.get("cosine_min") is not None else "",
            f"{d['cpu_tok_s']:.1f}" if d else "",
            f"{d['tok_s']:.1f}" if d else "",
            f"{d['ms_p10']:.1f}-{d['ms_p90']:.1f}" if d else "")


if __name__ == "__main__":
    main()
