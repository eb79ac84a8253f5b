"""`merino-mobile runner build`: cross-compile ExecuTorch's executor_runner (or, with `--runtime
llamacpp`, llama.cpp's llama-bench: `LlamaBenchBuild`) for Android phones.

The runner is ExecuTorch's own example runner (examples/portable/executor_runner) with the
XNNPACK delegate, optimized and quantized CPU kernels, built with the Android NDK for arm64-v8a.
Two commands, printed before they run so they can be copied:

    cmake -S <executorch-src> -B <build>
          -DCMAKE_TOOLCHAIN_FILE=<ndk>/build/cmake/android.toolchain.cmake
          -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-26 -DEXECUTORCH_BUILD_XNNPACK=ON ...
    cmake --build <build> --target executor_runner -j<N> --config Release

`EXECUTORCH_PAL_DEFAULT=posix` keeps the runner's log (the timings we parse) on stderr; the
android PAL would send it to logcat. The binary is then copied to `--out` (default
~/.cache/merino-mobile/runner/arm64-v8a/executor_runner, where the shipped phone profiles look).
Build the runner from the same ExecuTorch version that exports the .pte files (`pip show
executorch`): the flatbuffer schema and operator set must match.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from merino_mobile.errors import UserError

DEFAULT_OUT = Path("~/.cache/merino-mobile/runner/arm64-v8a/executor_runner")
CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "EXECUTORCH_BUILD_EXECUTOR_RUNNER": "ON",
    "EXECUTORCH_BUILD_XNNPACK": "ON",
    "EXECUTORCH_BUILD_KERNELS_OPTIMIZED": "ON",
    "EXECUTORCH_BUILD_KERNELS_QUANTIZED": "ON",
    # the LLM ops every exported decoder attends through (update_cache, custom_sdpa): with it
    # on, executor_runner links them (before ExecuTorch 1.0: EXECUTORCH_BUILD_KERNELS_CUSTOM)
    "EXECUTORCH_BUILD_KERNELS_LLM": "ON",
    "EXECUTORCH_BUILD_EXTENSION_DATA_LOADER": "ON",
    "EXECUTORCH_BUILD_EXTENSION_EVALUE_UTIL": "ON",
    "EXECUTORCH_BUILD_EXTENSION_FLAT_TENSOR": "ON",
    "EXECUTORCH_BUILD_EXTENSION_MODULE": "ON",
    "EXECUTORCH_BUILD_EXTENSION_RUNNER_UTIL": "ON",
    "EXECUTORCH_BUILD_EXTENSION_TENSOR": "ON",
    "EXECUTORCH_ENABLE_LOGGING": "ON",
    "EXECUTORCH_PAL_DEFAULT": "posix",
}


class CMakeBuild:
    """What the two runner builds share: the NDK's toolchain file, the two CMake commands (as a
    script to copy), and running them, then copying the binary to `out`. A build names its
    `source`, `binary`, `target`, CMake options and what it lacks (`missing`)."""

    ndk: Path
    source: Path
    build_dir: Path
    out: Path
    abi: str
    platform: str
    jobs: int
    target: str = ""
    what: str = "the runner"

    @property
    def toolchain(self) -> Path:
        return self.ndk / "build" / "cmake" / "android.toolchain.cmake"

    @property
    def binary(self) -> Path:
        raise NotImplementedError

    def options(self) -> dict[str, str]:
        raise NotImplementedError

    def missing(self) -> list[str]:
        raise NotImplementedError

    def configure_argv(self) -> list[str]:
        opts = {"CMAKE_TOOLCHAIN_FILE": str(self.toolchain), "ANDROID_ABI": self.abi,
                "ANDROID_PLATFORM": self.platform, **self.options()}
        return ["cmake", "-S", str(self.source), "-B", str(self.build_dir),
                *(f"-D{k}={v}" for k, v in opts.items())]

    def build_argv(self) -> list[str]:
        return ["cmake", "--build", str(self.build_dir), "--target", self.target,
                f"-j{self.jobs}", "--config", "Release"]

    def commands(self) -> list[list[str]]:
        return [self.configure_argv(), self.build_argv()]

    def script(self) -> str:
        """The commands as a shell script a user can copy."""
        return "\n".join(" ".join(shlex.quote(a) for a in argv) for argv in self.commands())

    def _missing_tools(self) -> list[str]:
        out = []
        if shutil.which("cmake") is None:
            out.append("cmake (>= 3.24): `pip install cmake` or your package manager")
        if not self.toolchain.is_file():
            out.append(f"the Android NDK toolchain file {self.toolchain} (--ndk must be an NDK "
                       "root, r26 or newer: Android Studio > SDK Manager > NDK, or "
                       "https://developer.android.com/ndk/downloads)")
        return out

    def installed(self) -> None:
        """Called once the binary is at `out` (the ExecuTorch runner records its version)."""

    def run(self, echo=print) -> Path:
        """Run the build and copy the binary to `out`; a missing prerequisite is a UserError."""
        missing = self.missing()
        if missing:
            raise UserError(f"cannot build {self.what} here; missing: " + "; ".join(missing))
        for argv in self.commands():
            echo("$ " + " ".join(shlex.quote(a) for a in argv))
            done = subprocess.run(argv)
            if done.returncode != 0:
                raise UserError(f"`{' '.join(argv[:2])} ...` failed (exit {done.returncode}); "
                                "the CMake output above says why")
        if not self.binary.is_file():
            raise UserError(f"the build finished but {self.binary} is missing")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.binary, self.out)
        self.out.chmod(0o755)
        self.installed()
        return self.out


@dataclass
class RunnerBuild(CMakeBuild):
    """The CMake build of executor_runner for one Android ABI."""

    ndk: Path
    executorch_src: Path
    build_dir: Path | None = None
    out: Path = DEFAULT_OUT
    abi: str = "arm64-v8a"
    platform: str = "android-26"
    jobs: int = field(default_factory=lambda: os.cpu_count() or 4)
    python: str = sys.executable
    target: str = "executor_runner"

    def __post_init__(self) -> None:
        self.ndk = Path(self.ndk).expanduser().resolve()
        self.executorch_src = self.source = Path(self.executorch_src).expanduser().resolve()
        default = self.executorch_src / f"cmake-out-android-{self.abi}"
        self.build_dir = Path(self.build_dir or default)
        self.out = Path(self.out).expanduser()

    @property
    def binary(self) -> Path:
        return self.build_dir / "executor_runner"

    def options(self) -> dict[str, str]:
        return {**CMAKE_OPTIONS, "PYTHON_EXECUTABLE": self.python}

    def missing(self) -> list[str]:
        """What this machine lacks for the build, each with how to get it."""
        out = self._missing_tools()
        if not (self.executorch_src / "CMakeLists.txt").is_file():
            out.append(f"ExecuTorch sources at {self.executorch_src} (git clone "
                       "https://github.com/pytorch/executorch, checkout the tag of your "
                       "installed executorch version)")
        elif not (self.executorch_src / "backends/xnnpack/third-party/XNNPACK/CMakeLists.txt"
                  ).is_file():
            out.append(f"ExecuTorch's submodules in {self.executorch_src} (run `git submodule "
                       "update --init --recursive` there)")
        return out

    def installed(self) -> None:
        from merino_mobile.device.checklist import write_runner_stamp  # readiness checks it

        write_runner_stamp(self.out, self.executorch_src)


LLAMA_BENCH_OUT = Path("~/.cache/merino-mobile/runner/arm64-v8a/llama-bench")
# llama.cpp's own Android recipe (docs/android.md), as one static binary to push: no OpenMP (the
# NDK's is a shared library), no llamafile kernels, no curl; armv8.2-a with dot products, which
# every phone core of the last years has (a later -march can fault on older cores)
LLAMA_CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "CMAKE_C_FLAGS": "-march=armv8.2-a+dotprod",
    "CMAKE_CXX_FLAGS": "-march=armv8.2-a+dotprod",
    "GGML_OPENMP": "OFF",
    "GGML_LLAMAFILE": "OFF",
    "LLAMA_CURL": "OFF",
    "BUILD_SHARED_LIBS": "OFF",
}


@dataclass
class LlamaBenchBuild(CMakeBuild):
    """The CMake build of llama.cpp's llama-bench for one Android ABI, the runner of .gguf
    artifacts on a phone (`merino-mobile runner build --runtime llamacpp`). Build it from the
    llama.cpp that llama-cpp-python vendors (`pip show llama-cpp-python`: its version names the
    llama.cpp it builds) so the phone reads the files this host writes."""

    ndk: Path
    llama_cpp_src: Path
    build_dir: Path | None = None
    out: Path = LLAMA_BENCH_OUT
    abi: str = "arm64-v8a"
    platform: str = "android-28"
    jobs: int = field(default_factory=lambda: os.cpu_count() or 4)
    target: str = "llama-bench"
    what: str = "llama-bench"

    def __post_init__(self) -> None:
        self.ndk = Path(self.ndk).expanduser().resolve()
        self.llama_cpp_src = self.source = Path(self.llama_cpp_src).expanduser().resolve()
        self.build_dir = Path(self.build_dir or self.llama_cpp_src / f"build-android-{self.abi}")
        self.out = Path(self.out).expanduser()

    @property
    def binary(self) -> Path:
        return self.build_dir / "bin" / "llama-bench"

    def options(self) -> dict[str, str]:
        return dict(LLAMA_CMAKE_OPTIONS)

    def missing(self) -> list[str]:
        out = self._missing_tools()
        if not (self.llama_cpp_src / "tools" / "llama-bench").is_dir():
            out.append(f"llama.cpp sources at {self.llama_cpp_src} (git clone "
                       "https://github.com/ggml-org/llama.cpp, or the vendor/llama.cpp folder of "
                       "llama-cpp-python's source package)")
        return out
