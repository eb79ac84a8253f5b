"""benchmarks/objectives_experiment.py at its reduced setting (issue 17: "the reduced experiment
runs in CI"): real BPE training, real training runs in worker processes, the analysis, resuming
and the refusal of a workspace started with other settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from merino_mobile.train import WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "objectives_experiment.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=ENV)


@pytest.mark.slow
def test_reduced_experiment_trains_scores_resumes_and_refuses_other_settings(tmp_path):
    ws, out = tmp_path / "ws", tmp_path / "result.json"
    common = ("--reduced", "--workspace", str(ws), "--out", str(out))
    p = run(*common, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["schema_version"] == 1 and result["mode"] == "reduced"
    assert (ws / "tokenizer.json").exists()
    assert json.loads((ws / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    rows = result["architectures"]
    assert len(rows) == 3 and all(r["val_loss"] > 0 for r in rows)
    # every sampled architecture is within +-10% of the FLOPs budget
    assert all(abs(r["flops"] / result["budget_flops"] - 1) <= 0.10 for r in rows)
    for name in ("deepmad", "merino", "params", "rho merino"):
        c = result["proxies"][name]
        assert -1 <= c["kendall_tau"] <= 1 and c["bootstrap"] > 0
    assert {"mp-deepmad", "mp-merino", "mp-merino-eff", "mp-params", "mp-deepmad-e256",
            "baseline"} == set(result["comparison"])
    assert result["comparison"]["mp-deepmad-e256"]["embed_width"] == 256
    for r in result["comparison"].values():
        # the designs keep the budget (an upper bound) and compare with the baseline's loss
        assert r["flops"] <= result["budget_flops"]
        assert r["minus_baseline"] == pytest.approx(
            r["val_loss"] - result["comparison"]["baseline"]["val_loss"])
        assert set(r["objectives"]) == {"deepmad", "merino", "params"}
    assert {r["effectiveness"] for r in result["constrained"]} == {"deepmad", "merino"}
    assert out.with_suffix(".png").stat().st_size > 1000
    # each run's checkpoint and result are in the workspace
    trained = sorted(p.parent.name for p in (ws / "runs").glob("*/result.json"))
    assert len(trained) >= 3 and all((ws / "runs" / n / WEIGHTS).exists() for n in trained)

    # a rerun reads every finished run back and trains nothing
    p = run(*common, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{len(trained)} of {len(trained)} runs finished" in p.stdout
    assert "training 0" in p.stdout
    again = json.loads(out.read_text())
    assert [r["val_loss"] for r in again["architectures"]] == [r["val_loss"] for r in rows]

    # the same workspace with other settings is refused, naming what differs
    p = run(*common, "--seed", "1", cwd=tmp_path)
    assert p.returncode == 2
    assert "holds an experiment with other settings (seed, train)" in p.stderr
    assert "Traceback" not in p.stderr
