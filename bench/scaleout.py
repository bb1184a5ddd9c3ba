"""The cpu_demo grid one cell after another against the same grid on a two-node Ray cluster.

    python bench/scaleout.py --n 20

starts a Ray head and a second node on this machine (`ray start`, one CPU each, in a temporary
folder), runs `uqflow grid grids/cpu_demo.yaml` without Ray and then with `--ray` into two
experiments of a temporary SQLite tracking store, and prints both wall times, their ratio, and what
Ray adds per cell: a no-op call on a warm actor (each cell is one such call) and the start of a new
actor (each model pays it once, as its worker process starts). On a 2-core machine the two nodes
share the cores that one process used, so expect little speed-up: the figures are for the record.
On a real cluster each model's cells run on a node of their own, so the wall time approaches that
of the slowest model's cells plus these overheads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(temp: str, env: dict[str, str]) -> str:
    """A head and a second node, one CPU each; returns the head's address."""
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
                    "--include-dashboard=false", *common], env=env, check=True, capture_output=True)
    subprocess.run([str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", *common], env=env, check=True,
                   capture_output=True)
    return f"127.0.0.1:{port}"


def stop_cluster(temp: str) -> None:
    """Every process of this cluster: those naming its folder, and their descendants."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
                procs[int(d.name)] = (int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), cmd)
            except (OSError, ValueError, IndexError):
                pass
    own = {pid for pid, (_, cmd) in procs.items() if temp in cmd}
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in own} - own
        if not more:
            break
        own |= more
    for pid in own:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_grid(experiment: str, n: int, env: dict[str, str], cwd: str, *ray: str) -> float:
    """Wall seconds of `uqflow grid grids/cpu_demo.yaml` (every cell run, none skipped)."""
    cmd = [sys.executable, "-m", "uqflow", "grid", str(ROOT / "grids" / "cpu_demo.yaml"), "--set", f"num_samples={n}", *ray]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env={**env, "MLFLOW_EXPERIMENT_NAME": experiment}, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"grid failed ({' '.join(ray) or 'sequential'}):\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def ray_overheads(address: str, home: str, calls: int = 30) -> tuple[float, float]:
    """Seconds for a new actor to start and answer (once per model), and the median round trip of
    a no-op call on a warm actor (once per cell)."""
    import ray

    @ray.remote(num_cpus=1)
    class Noop:
        def call(self) -> None:
            return None

    os.environ["HOME"] = home  # the cluster's own (see main)
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        t0 = time.perf_counter()
        actor = Noop.remote()
        ray.get(actor.call.remote())
        start = time.perf_counter() - t0
        trips = []
        for _ in range(calls):
            t0 = time.perf_counter()
            ray.get(actor.call.remote())
            trips.append(time.perf_counter() - t0)
        ray.kill(actor)
        return start, statistics.median(trips)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="questions per cell")
    args = parser.parse_args()
    work, temp = tempfile.mkdtemp(prefix="uqflow-scaleout-"), tempfile.mkdtemp(prefix="uqs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    # a home of its own, so that a Ray token or configuration of the user's is not picked up; the
    # bundled models' caches stay where they are
    env.update({"HOME": work, "UQFLOW_CACHE": os.environ.get("UQFLOW_CACHE", str(Path.home() / ".cache" / "uqflow")),
                "HF_HOME": os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))})
    env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"})
    try:
        address = start_cluster(temp, env)
        cells = 6
        sequential = run_grid("sequential", args.n, env, work)
        on_ray = run_grid("ray", args.n, env, work, "--ray", address)
        start, trip = ray_overheads(address, work)
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"cpu_demo grid, {cells} cells x {args.n} questions, {os.cpu_count()} CPU cores")
    print(f"  sequential (one process):        {sequential:7.1f} s")
    print(f"  Ray, two local nodes x 1 CPU:    {on_ray:7.1f} s")
    print(f"  ratio sequential / Ray:          {sequential / on_ray:7.2f}x")
    print(f"  Ray per cell (warm actor call):  {trip * 1000:7.2f} ms")
    print(f"  Ray per model (actor start):     {start:7.2f} s")


if __name__ == "__main__":
    main()
