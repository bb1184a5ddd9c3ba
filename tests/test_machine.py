"""The machine a run records (uqflow/machine.py): its facts, their fingerprint, which runs' figures
depend on it, and what the report says of runs from different machines."""

import json

import pytest

from uqflow import machine

XEON = {"model name": "Intel(R) Xeon(R) Platinum 8480+",
        "flags": "fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_int8"}


@pytest.fixture
def xeon(monkeypatch):
    """A fixed set of facts: a Sapphire Rapids CPU, 8 threads, bitsandbytes 0.50.2."""
    import torch

    monkeypatch.setattr(machine, "_cpuinfo", lambda: dict(XEON))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(machine, "_version", lambda dist: "0.50.2")
    return monkeypatch


def test_a_machine_is_its_cpu_flags_threads_and_library_versions(xeon):
    import torch
    import transformers

    tags = machine.machine_tags("cpu")
    assert tags[machine.DEVICE_TAG] == "cpu" and tags[machine.CPU_TAG].startswith("Intel(R) Xeon(R) Platinum 8480+, ")
    # only the flags that select kernels, sorted
    assert tags[machine.CPU_FLAGS_TAG] == ("amx_int8 amx_tile avx avx2 avx512_bf16 avx512_vnni avx512bw avx512f "
                                           "f16c fma sse4_2")
    assert tags[machine.CPU_CAPABILITY_TAG] == "AVX512" and tags[machine.THREADS_TAG] == "8"
    assert tags[machine.BNB_VERSION_TAG] == "0.50.2"
    assert (tags["torch_version"], tags["transformers_version"]) == (torch.__version__, transformers.__version__)
    assert machine.GPU_TAG not in tags  # a GPU only where the model runs on one
    again = machine.machine_tags("cpu")[machine.FINGERPRINT_TAG]
    assert tags[machine.FINGERPRINT_TAG] == machine.fingerprint(tags) == again and len(again) == 12


@pytest.mark.parametrize("change", ["no AVX-512", "AMX added", "threads", "kernel level", "bitsandbytes", "another CPU"])
def test_the_fingerprint_changes_when_a_fact_changes(xeon, change):
    import torch

    before = machine.machine_tags("cpu")[machine.FINGERPRINT_TAG]
    info = dict(XEON)
    if change == "no AVX-512":
        info["flags"] = " ".join(f for f in XEON["flags"].split() if not f.startswith("avx512"))
    elif change == "AMX added":
        info["flags"] += " amx_bf16"
    elif change == "another CPU":
        info["model name"] = "AMD EPYC 9654"
    elif change == "threads":
        xeon.setattr(torch, "get_num_threads", lambda: 16)
    elif change == "kernel level":
        xeon.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    elif change == "bitsandbytes":
        xeon.setattr(machine, "_version", lambda dist: "0.49.1")
    xeon.setattr(machine, "_cpuinfo", lambda: info)
    assert machine.machine_tags("cpu")[machine.FINGERPRINT_TAG] != before


def test_every_fact_enters_the_fingerprint_and_nothing_else_does():
    facts = {key: "x" for key in machine.FINGERPRINT_FACTS}
    base = machine.fingerprint(facts)
    for key in machine.FINGERPRINT_FACTS:
        assert machine.fingerprint({**facts, key: "y"}) != base, key
    assert machine.fingerprint({**facts, "model": "Gemma-3-270M"}) == base  # the run's own tags are not the machine


@pytest.mark.parametrize("tags, dependent", [
    ({"quantization": "8bit", "machine_device": "cpu"}, True),
    ({"quantization": "4bit", "machine_device": "cpu"}, True),
    ({"quantization": "8bit"}, True),  # recorded before the machine tags: taken as a CPU's
    ({"quantization": "8bit", "machine_device": "cuda"}, False),
    ({"quantization": "gguf-q4_1", "machine_device": "cpu"}, False),
    ({"quantization": "none", "machine_device": "cpu"}, False),
])
def test_figures_depend_on_the_machine_for_bitsandbytes_on_a_cpu(tags, dependent):
    assert machine.machine_dependent(tags) is dependent


def test_the_quantization_answer_names_the_machine_and_runs_from_different_machines(tracking, tmp_path, xeon):
    """An 8-bit run's figures are one machine's; where the compared runs come from two machines
    (the 8-bit one on a CPU without AVX-512), the report says so."""
    from store_fixtures import log_run

    from uqflow.report import load_study
    from uqflow.report.stats import answer_all
    from uqflow.store.aggregation import aggregate

    log_run("SmolLM2-135M-Instruct", "trivia_mini", 40, 1)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    log_run("SmolLM2-135M-Instruct-8bit", "trivia_mini", 40, 2)
    aggregate(url=url)
    q = {a.key: a for a in answer_all(load_study(url))}["quantization"]
    one = machine.machine_tags("cpu")[machine.FINGERPRINT_TAG]
    assert q.answerable
    assert f"hold for the machine that made them (machine {one}: Intel(R) Xeon(R) Platinum 8480+" in q.answer
    assert "AVX512 kernels, 8 threads, bitsandbytes 0.50.2)" in q.answer
    assert "different machines" not in q.answer and q.numbers["machines"]["distinct"] == [one]

    xeon.setattr(machine, "_cpuinfo", lambda: {**XEON, "flags": "avx avx2 fma f16c"})
    other = machine.machine_tags("cpu")[machine.FINGERPRINT_TAG]
    quantized = log_run("SmolLM2-135M-Instruct-8bit", "trivia_mini", 40, 2)  # the later run is compared
    aggregate(url=url)
    study = load_study(url)
    row = study.runs.set_index("run_id").loc[quantized]
    assert json.loads(row["tags"])[machine.FINGERPRINT_TAG] == other  # the store's runs row holds the tags
    q = {a.key: a for a in answer_all(study)}["quantization"]
    assert f"come from 2 different machines ({min(one, other)}: " in q.answer, q.answer
    assert q.numbers["machines"]["fingerprints"] == {"SmolLM2-135M-Instruct × trivia_mini": one,
                                                     "SmolLM2-135M-Instruct-8bit × trivia_mini": other}
