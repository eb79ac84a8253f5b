"""llama.cpp on a phone: llama-bench's command line and JSON, a real GGUF benched through the
loopback adbd (tests/adbd) with a host llama-bench standing in (tests/adbd/llama_bench.py:
llama-cpp-python running the file), the readiness check and the runner build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from adbd import LoopbackAdbd  # noqa: E402
from test_adb import write_profile  # noqa: E402

from merino_mobile.card import Block, Card  # noqa: E402
from merino_mobile.device import runners  # noqa: E402
from merino_mobile.workspace import Workspace  # noqa: E402

LLAMA_BENCH = Path(__file__).parent / "adbd" / "llama_bench.py"
CARD = Card("tiny-gguf", vocab=256, context=64, head_dim=16, positions="rope", norm="rmsnorm",
            bias=False, blocks=(Block(64, 2.0, 4, 2, ffn="swiglu", kv_heads=2),))
# the shape of llama-bench's README's JSON example, shortened to the fields read
TG = {"build_commit": "8cf427ff", "n_threads": 2, "n_prompt": 0, "n_gen": 4, "n_depth": 128,
      "avg_ns": 40_000_000, "samples_ns": [40_000_000, 44_000_000, 36_000_000]}


def test_llama_bench_argv_and_json():
    assert runners.llama_bench_argv("/d/llama-bench", "/d/m.gguf", prompt=0, generate=1,
                                    depth=128, repetitions=5, threads=2) == [
        "/d/llama-bench", "-m", "/d/m.gguf", "-p", "0", "-n", "1", "-d", "128", "-r", "5",
        "-t", "2", "-o", "json"]
    t = runners.parse_llama_bench("load log line\n" + json.dumps([TG]))
    # a generation's sample covers n_gen tokens: per call (one token) it is a quarter
    assert t.ok and t.samples() == pytest.approx([10.0, 11.0, 9.0]) and t.threads == 2
    pp = runners.parse_llama_bench(json.dumps([TG | {"n_prompt": 64, "n_gen": 0}]))
    assert pp.samples() == pytest.approx([40.0, 44.0, 36.0])
    bad = runners.parse_llama_bench(json.dumps([TG | {"samples_ns": [1e7, "nan"]}]))
    assert not bad.ok and bad.samples() == [] and '"nan"' in bad.error()
    assert "did not print its JSON" in runners.parse_llama_bench("error: model not found").error()
    two = runners.parse_llama_bench(json.dumps([TG, TG]))
    assert not two.ok and "not one test" in two.error()


def phone_profile(path: Path, address: str, tool: Path | None) -> Path:
    """The loopback phone's profile with llama.cpp as a runtime (its llama-bench at `tool`)."""
    write_profile(path, address, LLAMA_BENCH, remote_dir="/data/local/tmp/merino-mobile")
    text = path.read_text().replace('runtimes = ["executorch"]',
                                    'runtimes = ["llamacpp", "executorch"]')
    if tool is not None:
        text = text.replace('remote_dir = "/data/local/tmp/merino-mobile"',
                            f'remote_dir = "/data/local/tmp/merino-mobile"\n'
                            f'llama_bench = "{tool}"')
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_gguf_benched_on_the_phone_through_llama_bench(tmp_path):
    """bench of a real .gguf on the loopback phone: pushed once, timed by (the stand-in for)
    llama-bench at the prefill and at each decode position, stored under the phone."""
    from merino_mobile.deploy.bench import bench_artifact
    from merino_mobile.export import export
    from merino_mobile.latency.store import read_measurements

    art = export(CARD, "gguf", "fp16", tmp_path / "gguf", cache_len=48, verify=False).artifact
    ws = Workspace.resolve(tmp_path / "ws")
    ws.devices.mkdir(parents=True)
    with LoopbackAdbd(tmp_path / "phone") as d:
        phone_profile(ws.devices / "loopback-pixel7.toml", d.address, LLAMA_BENCH)
        r = bench_artifact(ws, art, "loopback-pixel7", prompt=16, generate=8, repeat=3)
        runs = [c for c in d.commands if "llama_bench.py -m" in c]
    assert r.runtime == "llamacpp" and r.device == "loopback-pixel7"
    assert r.fingerprint["runtime"] == "llamacpp"
    assert r.fingerprint["runtime_version"].startswith("llama_bench.py sha256:")
    # one prefill of 16 tokens, one token decoded at each of the positions 16 and 23
    assert len(runs) == 3 and all("-o json" in c and "taskset" in c for c in runs)
    assert any("-p 16 -n 0 -d 0" in c for c in runs)
    assert {16, 23} == set(r.decode_positions) and any("-p 0 -n 1 -d 23" in c for c in runs)
    assert len(r.ttft_samples_ms) == 3 and r.ttft_ms.median > 0
    assert len(r.decode_samples_ms) == 3 and r.decode_tokens_per_s.median > 0
    assert r.attends == "position" and r.decode_context == 21  # (17 + 24) / 2, rounded up
    (m,) = read_measurements(ws.state, device="loopback-pixel7")
    assert m.runtime == "llamacpp" and m.decode_median_ms == r.decode_ms_per_token.median


def test_a_phone_without_llama_bench_is_told_how_to_build_it(tmp_path):
    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.backends import readiness
    from merino_mobile.device.profiles import read_profile
    from merino_mobile.errors import UserError

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with LoopbackAdbd(tmp_path / "phone") as d:
        prof = read_profile(phone_profile(tmp_path / "p.toml", d.address, None))
        checks = {c.name: c for c in readiness(prof, "llamacpp")}
        assert not checks["runner"].ok
        assert "no llama-bench for loopback-pixel7" in checks["runner"].detail
        assert "runner build --runtime llamacpp" in checks["runner"].fix
        dev = AndroidPhone(prof)
        assert "llamacpp" not in dev.runtimes()
        with pytest.raises(UserError, match="no llama-bench for loopback-pixel7: build"):
            dev.prepare(gguf)
        dev.cleanup()


def test_runner_build_of_llama_bench(tmp_path):
    cmd = [sys.executable, "-c", "from merino_mobile.cli import main; main()", "runner", "build",
           "--runtime", "llamacpp", "--ndk", str(tmp_path / "ndk")]
    src = ["--llama-cpp-src", str(tmp_path / "llama.cpp")]
    dry = subprocess.run(cmd + src + ["--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    configure, build = dry.stdout.strip().splitlines()
    assert configure.startswith(f"cmake -S {tmp_path / 'llama.cpp'} ")
    for flag in ("-DANDROID_ABI=arm64-v8a", "-DGGML_OPENMP=OFF", "-DBUILD_SHARED_LIBS=OFF",
                 f"-DCMAKE_TOOLCHAIN_FILE={tmp_path / 'ndk'}/build/cmake/android.toolchain.cmake"):
        assert flag in configure
    assert "--target llama-bench" in build
    real = subprocess.run(cmd + src, capture_output=True, text=True, timeout=120)
    assert real.returncode == 2 and "Traceback" not in real.stderr
    assert "cannot build llama-bench here; missing:" in real.stderr
    assert "llama.cpp sources at" in real.stderr
    bare = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "--runtime llamacpp needs --llama-cpp-src DIR" in bare.stderr
