"""The served engine's parts that need no server: the two shapes of completions' log-probabilities,
token entropy from the top k, per-sample seeds, served entries in registry files, and which engine a
run of a served model takes (backend=auto)."""

import math
import os

import numpy as np
import pytest

from uqflow.errors import ConfigError, ModelRegistryError
from uqflow.generation import ENGINES, backend_for, engine_of
from uqflow.generation.served import (Completion, api_base, parse_choice, sample_seed, server_kind, top_k_entropy)
from uqflow.models.registry import MODELS, load_registry_file

#: a choice as llama.cpp's llama-server (build 11434) returns it for `logprobs: 2` (recorded)
LLAMA_CPP_CHOICE = {
    "text": " Paris.", "index": 0, "finish_reason": "stop",
    "logprobs": {"content": [
        {"id": 7042, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115], "logprob": -0.2484,
         "top_logprobs": [{"id": 7042, "token": " Paris", "logprob": -0.2484}, {"id": 260, "token": " the", "logprob": -2.7847}]},
        {"id": 30, "token": ".", "bytes": [46], "logprob": -0.3992,
         "top_logprobs": [{"id": 30, "token": ".", "logprob": -0.3992}, {"id": 198, "token": "\n", "logprob": -1.52}]},
    ]},
}
#: the same as OpenAI's legacy completions shape, as vLLM returns it with `return_tokens_as_token_ids`
VLLM_CHOICE = {
    "text": " Paris.", "index": 0, "finish_reason": "stop", "stop_reason": None,
    "logprobs": {"text_offset": [0, 6], "token_logprobs": [-0.2484, -0.3992], "tokens": ["token_id:7042", "token_id:30"],
                 "top_logprobs": [{"token_id:7042": -0.2484, "token_id:260": -2.7847},
                                  {"token_id:30": -0.3992, "token_id:198": -1.52}]},
}


@pytest.mark.parametrize("choice", [LLAMA_CPP_CHOICE, VLLM_CHOICE], ids=["llama.cpp", "vllm"])
def test_both_shapes_of_log_probabilities_read_alike(choice):
    c = parse_choice(choice)
    assert c == Completion([7042, 30], [-0.2484, -0.3992], [[(7042, -0.2484), (260, -2.7847)], [(30, -0.3992), (198, -1.52)]],
                           " Paris.", "stop")


def test_vllm_token_ids_field_wins_and_unmappable_tokens_are_refused():
    with_ids = {**VLLM_CHOICE, "token_ids": [7042, 30],
                "logprobs": {**VLLM_CHOICE["logprobs"], "tokens": [" Paris", "."]}}
    assert parse_choice(with_ids).ids == [7042, 30]
    plain = {**VLLM_CHOICE, "logprobs": {**VLLM_CHOICE["logprobs"], "tokens": [" Paris", "."]}}
    with pytest.raises(ValueError):  # hosted APIs return token strings only; the engine maps them by the tokenizer
        parse_choice(plain)
    assert parse_choice(plain, {" Paris": 7042, ".": 30}.get).ids == [7042, 30]
    with pytest.raises(KeyError, match="logprobs"):
        parse_choice({"text": "Paris", "finish_reason": "stop"})


def test_top_k_entropy_is_a_lower_bound_that_is_exact_with_every_token():
    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.normal(scale=3, size=200)
        logp = logits - np.log(np.exp(logits).sum())
        full = float(-(np.exp(logp) * logp).sum())
        order = np.argsort(-logp)
        tops = [(int(i), float(logp[i])) for i in order]
        assert top_k_entropy(tops) == pytest.approx(full, abs=1e-9)
        for k in (1, 5, 20):
            truncated = float(-sum(math.exp(v) * v for _, v in tops[:k]))
            assert truncated - 1e-12 <= top_k_entropy(tops[:k]) <= full + 1e-12  # tighter than the plain sum
    assert math.isnan(top_k_entropy([]))


def test_sample_seeds_depend_on_the_run_seed_prompt_and_index_only():
    assert sample_seed(10, [1, 2, 3], 0) == sample_seed(10, [1, 2, 3], 0)
    seeds = {sample_seed(s, p, k) for s in (10, 11) for p in ([1, 2, 3], [1, 2, 4]) for k in range(3)}
    assert len(seeds) == 12 and all(0 <= s < 2**31 for s in seeds)


def test_server_kind_and_api_base():
    assert server_kind([{"id": "m", "owned_by": "llamacpp"}], "m") == "llama.cpp"
    assert server_kind([{"id": "m", "owned_by": "vllm"}], "m") == "vllm"
    assert server_kind([{"id": "m", "owned_by": "openai"}], "m") == "openai"
    assert api_base("http://h:8000") == api_base("http://h:8000/v1/") == "http://h:8000/v1"


SERVED = """models:
  - name: Llama-70B-vllm
    url: http://gpu-node-7:8000/v1
    served_name: meta-llama/Llama-3.1-70B-Instruct
    tokenizer: SmolLM2-135M-Instruct
    family: Llama
    size_b: 70.6
    instruct: true
    quantization: fp8
    top_logprobs: 5
    concurrency: 16
"""


def test_a_served_entry_takes_a_registered_models_tokenizer(tmp_path):
    f = tmp_path / "models.yaml"
    f.write_text(SERVED)
    (spec,) = load_registry_file(f)
    assert spec.served.url == "http://gpu-node-7:8000/v1" and spec.served.model == "meta-llama/Llama-3.1-70B-Instruct"
    assert (spec.served.top_logprobs, spec.served.concurrency, spec.served.api_key_env) == (5, 16, "UQFLOW_API_KEY")
    smol = MODELS.get("SmolLM2-135M-Instruct")
    assert (spec.source, spec.gguf_file) == (smol.source, smol.gguf_file)  # the bundled tokenizer
    assert spec.precision == "fp8" and MODELS.get("SmolLM2-135M-Instruct-served").precision == "q4_1"


@pytest.mark.parametrize("change,message", [
    (("url: http://gpu-node-7:8000/v1", "url: http://me:secret@gpu-node-7:8000/v1"), "must not hold credentials"),
    (("url: http://gpu-node-7:8000/v1", "url: gpu-node-7:8000"), "is not an http(s) URL"),
    (("tokenizer: SmolLM2-135M-Instruct", "tokenizer: no-such-model"), "tokenizer 'no-such-model' is neither"),
    (("concurrency: 16", "concurrency: 0"), "concurrency must be positive"),
    (("top_logprobs: 5", "top_logprobs: -1"), "top_logprobs must be 0 or more"),
    (("    tokenizer: SmolLM2-135M-Instruct\n", ""), "missing field(s) tokenizer"),
    (("concurrency: 16", "concurrency: 16\n    api_key: sk-123"), "unknown field(s) api_key"),
])
def test_bad_served_entries_are_named(tmp_path, change, message):
    f = tmp_path / "models.yaml"
    f.write_text(SERVED.replace(*change))
    with pytest.raises(ModelRegistryError) as e:
        load_registry_file(f)
    assert message in str(e.value) and "sk-123" not in str(e.value) and "secret" not in str(e.value)


def test_auto_takes_the_models_engine_and_mismatches_are_named():
    served, local = MODELS.get("SmolLM2-135M-Instruct-served"), MODELS.get("SmolLM2-135M-Instruct")
    assert engine_of("auto", served).served and not engine_of("auto", local).served
    assert engine_of("auto", local) is ENGINES.get(backend_for("auto", local)) and engine_of("auto", local).in_process
    in_process = next(n for n, k in ENGINES.items() if k.in_process)
    with pytest.raises(ConfigError, match="is served at http://127.0.0.1:8080/v1.*use backend=auto"):
        backend_for(in_process, served)
    server = next(n for n, k in ENGINES.items() if k.served)
    with pytest.raises(ConfigError, match="is not served"):
        backend_for(server, local)


def test_api_keys_reach_ray_workers_as_secrets_never_in_the_runtime_environment(monkeypatch, tmp_path):
    """A grid on Ray: the variable a served model's key is read from reaches the workers with the
    other credentials (an actor's argument), whatever its name, and never the job's runtime
    environment, which Ray writes to its logs and shows on its dashboard."""
    from uqflow import cluster
    from uqflow.credentials import hide

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("UQFLOW_API_KEY", "sk-default-variable-123")
    monkeypatch.setenv("MY_SERVER_KEY", "sk-own-variable-456")
    assert "UQFLOW_API_KEY" not in cluster.worker_env()
    secrets = cluster.worker_secrets({"MY_SERVER_KEY"})
    assert "MY_SERVER_KEY" in repr(secrets) and "sk-" not in repr(secrets)
    monkeypatch.delenv("UQFLOW_API_KEY")
    monkeypatch.delenv("MY_SERVER_KEY")
    secrets.apply()  # what a worker does before its first run
    assert (os.environ["UQFLOW_API_KEY"], os.environ["MY_SERVER_KEY"]) == ("sk-default-variable-123", "sk-own-variable-456")
    assert hide("failed with key sk-default-variable-123") == "failed with key ***"  # masked in any message
    monkeypatch.delenv("UQFLOW_API_KEY")
    monkeypatch.delenv("MY_SERVER_KEY")
