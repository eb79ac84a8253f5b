#!/usr/bin/env python3
"""A host stand-in for llama.cpp's llama-bench (tools/llama-bench), built for arm64 on a phone.

Pushed to the loopback adbd in place of the binary a phone would run. The flags the project
sends (-m MODEL -p N_PROMPT -n N_GEN -d N_DEPTH -r REPETITIONS -t THREADS -o json) and the JSON
it prints (an array with one object per test: n_prompt, n_gen, n_depth, n_threads, avg_ns,
stddev_ns, samples_ns, samples_ts, ...) follow llama-bench's README (tools/llama-bench/README.md,
"Syntax" and "JSON"); no real llama-bench is built on this host, so that is what it was checked
against, not a side-by-side run. The model really runs: llama.cpp through llama-cpp-python, as
llama-bench runs it: one untimed warm-up run, then per repetition a fresh context whose cache
is filled with N_DEPTH tokens (untimed) before the timed prefill of N_PROMPT tokens or the
N_GEN tokens generated one at a time. One -p and one -n value per run (the project never sends
lists); anything else is refused with llama-bench's exit status 1.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

TOKEN = 1  # llama-bench feeds synthetic tokens; what matters is how many


def parse(argv: list[str]) -> dict[str, str]:
    names = {"-m": "model", "-p": "n_prompt", "-n": "n_gen", "-d": "n_depth",
             "-r": "repetitions", "-t": "threads", "-o": "output"}
    flags = {"n_prompt": "512", "n_gen": "128", "n_depth": "0", "repetitions": "5",
             "threads": "4", "output": "md"}
    it = iter(argv)
    for arg in it:
        if arg not in names:
            raise SystemExit(f"error: unknown argument: {arg}")
        flags[names[arg]] = next(it)
    return flags


def main() -> int:
    flags = parse(sys.argv[1:])
    if flags["output"] != "json" or "," in flags["n_prompt"] + flags["n_gen"]:
        print("this stand-in prints -o json for one test", file=sys.stderr)
        return 1
    from merino_mobile.export.gguf import load_llama

    p, n, d = (int(flags[k]) for k in ("n_prompt", "n_gen", "n_depth"))
    threads = int(flags["threads"])
    llm = load_llama(flags["model"], threads=threads, n_ctx=max(1, p + n + d))

    def once() -> float:
        llm.reset()
        if d:
            llm.eval([TOKEN] * d)
        t0 = time.perf_counter_ns()
        if p:
            llm.eval([TOKEN] * p)
        for _ in range(n):
            llm.eval([TOKEN])
        return time.perf_counter_ns() - t0

    once()  # llama-bench's warm-up run
    samples = [once() for _ in range(int(flags["repetitions"]))]
    tokens = p + n
    result = {
        "build_commit": "stand-in", "model_filename": flags["model"], "n_threads": threads,
        "n_prompt": p, "n_gen": n, "n_depth": d, "type_k": "f16", "type_v": "f16",
        "test_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "avg_ns": int(statistics.fmean(samples)),
        "stddev_ns": int(statistics.stdev(samples)) if len(samples) > 1 else 0,
        "samples_ns": [int(s) for s in samples],
        "samples_ts": [tokens * 1e9 / s for s in samples]}
    result["avg_ts"] = statistics.fmean(result["samples_ts"])
    print(json.dumps([result], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
