"""Answer alignment at stop sequences, and greedy generation on the bundled models."""

from pathlib import Path

import pytest

from uqflow.generation.base import align_answer
from uqflow.prompts import STOP_SEQUENCES


def decode_pieces(pieces):
    return lambda ids: "".join(pieces[i] for i in ids)


@pytest.mark.parametrize("pieces,n,reason,dropped", [
    ([" Paris", "\n", "Question"], 1, "stop_sequence", ""),
    ([" Paris", ".\n", "Q"], 1, "stop_sequence", "."),  # straddling token: not an answer token
    ([" Paris", " Question", ":"], 1, "stop_sequence", " "),  # multi-token stop sequence
    ([" Leo", " Tol", "stoy", "<eos>", "x"], 3, "eos", ""),
    ([" one", " two", " three"], 3, "length", ""),
    (["\n", "Paris"], 0, "stop_sequence", ""),  # empty answer
])
def test_align_answer(pieces, n, reason, dropped):
    eos = {pieces.index("<eos>")} if "<eos>" in pieces else set()
    got = align_answer(list(range(len(pieces))), decode_pieces(pieces), eos, STOP_SEQUENCES)
    assert got == (n, reason, dropped)


def _check_aligned(lm, gens):
    tok = lm.tokenizer
    for g in gens:
        assert len(g.token_ids) == len(g.token_logprobs) == len(g.token_entropies)
        assert tok.decode(g.token_ids, skip_special_tokens=True).strip() == g.text
        assert not any(s in g.text for s in STOP_SEQUENCES)
        assert all(lp <= 0 for lp in g.token_logprobs)
        assert all(h >= 0 for h in g.token_entropies)


def _same_records(got, ref):
    """The same answers and stop reasons, log-probabilities within 1e-4, entropies within 1e-3."""
    for a, b in zip(got, ref, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text and a.stop_reason == b.stop_reason
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        assert a.token_entropies == pytest.approx(b.token_entropies, abs=1e-3)


def _prompts(lm, dataset, n):
    from uqflow.data import load_dataset
    from uqflow.prompts import PromptOptions, build_prompts, draw_few_shot

    ds = load_dataset(dataset)
    shots = draw_few_shot(ds.few_shot_pool, 5, 10)
    examples = [ex for ex in ds.examples if ex.answerable][:n]
    prompts, _ = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct,
                               opts=PromptOptions(), max_prompt_tokens=4000)
    return [p.token_ids for p in prompts]


@pytest.mark.slow
@pytest.mark.parametrize("fixture,dataset,n", [
    ("smollm", "trivia_mini", 40), ("gemma", "trivia_mini", 64),
    ("gemma", "squad_mini", 10),  # passages longer than Gemma's sliding window: no shared prefix
])
def test_generation_aligned_and_batch_invariant(fixture, dataset, n, request):
    """Same answers and G-NLL within 1e-4 whether the batch size is 1 or 64."""
    from uqflow.generation.hf import HFEngine
    from uqflow.scoring.uncertainty import g_nll

    lm = request.getfixturevalue(fixture)
    ids = _prompts(lm, dataset, n)
    batched = HFEngine(lm, batch_size=64, max_new_tokens=12).generate(ids)
    single = HFEngine(lm, batch_size=1, max_new_tokens=12).generate(ids)
    _check_aligned(lm, batched)
    assert [g.text for g in batched] == [g.text for g in single]
    for a, b in zip(batched, single):
        assert a.token_ids == b.token_ids
        assert g_nll(a.token_logprobs) == pytest.approx(g_nll(b.token_logprobs), abs=1e-4)
    assert sum(bool(g.text) for g in batched) > n // 2  # the model answers


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm", "gemma"])
def test_the_engines_attention_kernels_change_no_answer(fixture, request):
    """The SDPA kernels the engine allows on a GPU (SDPA_BACKENDS: flash, memory-efficient, math;
    not cuDNN), forced here on the CPU for each of its calls (prefills and decode steps), give
    today's answers and G-NLL within float rounding, with the engine's left-padded masks and shared
    prefix (Llama-style and Gemma 3 sliding-window attention alike). A GPU applies them by itself
    (bench/gpu_check.sh measures the speed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from uqflow.generation.hf import SDPA_BACKENDS, HFEngine

    lm = request.getfixturevalue(fixture)
    ids = _prompts(lm, "trivia_mini", 24)
    default = HFEngine(lm, batch_size=12, max_new_tokens=16).generate(ids)
    chosen = HFEngine(lm, batch_size=12, max_new_tokens=16)
    assert chosen.sdpa == {"prefill": SDPA_BACKENDS, "decode": SDPA_BACKENDS}
    phases = []

    def kernels(phase):
        phases.append(phase)
        return sdpa_kernel([getattr(SDPBackend, n) for n in chosen.sdpa[phase]])

    chosen._kernels = kernels
    for a, b in zip(chosen.generate(ids), default):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    assert {"prefill", "decode"} <= set(phases)  # each call under its phase's kernels


@pytest.mark.slow
def test_shared_prefix_cache_changes_nothing(smollm):
    from uqflow.generation.hf import HFEngine

    ids = _prompts(smollm, "trivia_mini", 24)
    shared = HFEngine(smollm, batch_size=12, max_new_tokens=16)
    assert len(shared._shared_prefix(ids)) > 100  # instruction and five examples
    plain = HFEngine(smollm, batch_size=12, max_new_tokens=16, share_prefix=False).generate(ids)
    _same_records(shared.generate(ids), plain)


@pytest.mark.slow
def test_waiting_prompts_join_a_running_batch_and_change_no_answer(smollm):
    """Continuous refill: as rows finish, waiting prompts are prefilled and stacked onto the running
    batch (left-padded caches, their own positions). Every answer and its statistics equal those of
    the prompt decoded alone, and the counters count each prefill and token once."""
    from uqflow.generation.hf import HFEngine

    ids = _prompts(smollm, "trivia_mini", 24)
    engine = HFEngine(smollm, batch_size=6, max_new_tokens=16)
    assert engine.refill
    admitted = []
    prefill = engine._prefill
    engine._prefill = lambda batch, *a: admitted.append(len(batch)) or prefill(batch, *a)
    joined = engine.generate(ids)
    assert admitted[0] == 6 and len(admitted) > 4 and sum(admitted) == len(ids)  # joined a few at a time
    alone_engine = HFEngine(smollm, batch_size=1, max_new_tokens=16)
    alone = alone_engine.generate(ids)
    _check_aligned(smollm, joined)
    _same_records(joined, alone)
    assert engine.passes == alone_engine.passes and engine.tokens == alone_engine.tokens
    # sampled answers: each prompt's group joins together; with one answer drawn per stream the
    # same tokens as a batch of one (a draw near a boundary between two tokens may differ: see sample)
    grouped = HFEngine(smollm, batch_size=6, max_new_tokens=10).sample(ids[:6], 3, seed=3)
    single = HFEngine(smollm, batch_size=1, max_new_tokens=10).sample(ids[:6], 3, seed=3)
    same = sum(a.token_ids == b.token_ids for xs, ys in zip(grouped, single) for a, b in zip(xs, ys))
    assert same >= 15 and all(len(xs) == 3 for xs in grouped)


@pytest.mark.slow
@pytest.mark.parametrize("dataset,n,batch,way", [("trivia_mini", 24, 6, -1), ("squad_mini", 10, 3, 1)])
def test_static_cache_layout_changes_no_answer(smollm, dataset, n, batch, way, monkeypatch):
    """The static layout (fixed shapes, the step CUDA graphs capture): finished rows keep their
    slots until waiting prompts take them, every row writes the same cache slot, and the slots are
    shifted to make room: back as rows finish, on where a longer prompt joins (SQuAD's passages
    differ in length by hundreds of tokens). Its
    answers, log-probabilities, entropies and counters are the dynamic layout's, greedy and (on
    TriviaQA) sampled."""
    from uqflow.generation import batches
    from uqflow.generation.hf import HFEngine

    shifts = []
    shift = batches.StaticBatch._shift
    monkeypatch.setattr(batches.StaticBatch, "_shift", lambda self, d: shifts.append(d) or shift(self, d))
    ids = _prompts(smollm, dataset, n)
    dynamic = HFEngine(smollm, batch_size=batch, max_new_tokens=16, layout="dynamic")
    static = HFEngine(smollm, batch_size=batch, max_new_tokens=16, layout="static")
    assert static.layout == "static"
    _same_records(static.generate(ids), dynamic.generate(ids))
    assert static.passes == dynamic.passes and static.tokens == dynamic.tokens
    assert any(d * way > 0 for d in shifts)  # room made beside running rows (a new batch needs none)
    if dataset != "trivia_mini":
        return
    sampled = static.sample(ids[:6], 3, seed=3)
    reference = dynamic.sample(ids[:6], 3, seed=3)
    same = sum(a.token_ids == b.token_ids for xs, ys in zip(sampled, reference) for a, b in zip(xs, ys))
    assert same >= 16 and static.passes == dynamic.passes  # a draw at a token boundary may differ (see sample)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dynamic", "static"])
def test_out_of_memory_halves_the_batch_and_keeps_every_answer(smollm, layout):
    """On out-of-memory mid-way (here the third admission of waiting prompts) a batch-invariant
    model's finished answers stand and the rest start again at half the batch, in either layout,
    with the answers a run that never ran short gives."""
    from uqflow.generation.hf import HFEngine

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError, by name as the engine sees it
        pass

    ids = _prompts(smollm, "trivia_mini", 16)
    engine = HFEngine(smollm, batch_size=4, max_new_tokens=12, layout=layout)
    prefill, calls = engine._prefill, []

    def short_once(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OutOfMemoryError("CUDA out of memory")
        return prefill(*args)

    engine._prefill = short_once
    got = engine.generate(ids)
    assert engine.batch_size == 2 and len(calls) > 3
    _same_records(got, HFEngine(smollm, batch_size=4, max_new_tokens=12).generate(ids))


@pytest.mark.slow
def test_static_layout_only_where_it_keeps_the_records(gemma, monkeypatch):
    """A model whose caches cannot be stacked (Gemma 3's sliding-window layers) decodes dynamically
    whatever UQFLOW_LAYOUT says; an unknown layout is refused by name."""
    from uqflow.errors import ConfigError
    from uqflow.generation.hf import HFEngine

    monkeypatch.setenv("UQFLOW_LAYOUT", "graphs")
    assert HFEngine(gemma, max_new_tokens=4).layout == "dynamic"
    monkeypatch.setenv("UQFLOW_LAYOUT", "statc")
    with pytest.raises(ConfigError, match="unknown decode layout 'statc'.*dynamic, static, graphs"):
        HFEngine(gemma, max_new_tokens=4)


@pytest.mark.slow
def test_a_step_that_fails_to_compile_decodes_on_uncompiled(smollm, monkeypatch, caplog):
    """Where torch.compile cannot compile the step (no C++ compiler, no Triton), layout="graphs"
    says so once and decodes on with the static layout uncompiled, with the same answers."""
    import torch
    from torch._dynamo.exc import TorchDynamoException

    from uqflow.generation.hf import HFEngine

    calls = []

    def compile_that_fails(fn, **kwargs):
        def call(*args):
            calls.append(1)
            raise TorchDynamoException("no working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", compile_that_fails)
    monkeypatch.setattr("uqflow.generation.hf._COMPILED_STEPS", {})  # none compiled before, none kept after
    ids = _prompts(smollm, "trivia_mini", 8)
    with caplog.at_level("WARNING", logger="uqflow.generation.hf"):
        got = HFEngine(smollm, batch_size=4, max_new_tokens=8, layout="graphs").generate(ids)
    _same_records(got, HFEngine(smollm, batch_size=4, max_new_tokens=8).generate(ids))
    assert len(calls) == 1 and caplog.text.count("the compiled decode step failed (no working C++ compiler") == 1


@pytest.mark.slow
def test_compiled_static_step_changes_no_answer(smollm, tmp_path):
    """layout="graphs": the static step compiled by torch.compile (on a GPU captured as a CUDA graph;
    here inductor's CPU code) gives the dynamic layout's answers, and a second engine over the same
    model reuses what the first compiled. In a process of its own, its compiler caches in the
    test's folder."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "graphs.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_generation import _prompts\n"
        "from uqflow.models import MODELS, load_model\n"
        "from uqflow.generation.hf import HFEngine\n"
        "lm = load_model(MODELS.get('SmolLM2-135M-Instruct'), 'cpu')\n"
        "ids = _prompts(lm, 'trivia_mini', 16)\n"
        "from torch._dynamo.utils import counters\n"
        "out = {}\n"
        "for layout in ('dynamic', 'graphs', 'graphs'):\n"
        "    e = HFEngine(lm, batch_size=4, max_new_tokens=12, layout=layout)\n"
        "    out[layout] = [(g.token_ids, g.token_logprobs, g.stop_reason) for g in e.generate(ids)]\n"
        "    out[layout + '_passes'] = e.passes\n"
        "    out.setdefault('graphs_compiled', []).append(counters['stats']['unique_graphs'])\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["graphs_passes"] == out["dynamic_passes"]
    # compiled by the first engine; the second over the same model and shapes compiles nothing more
    assert out["graphs_compiled"][0] == 0 < out["graphs_compiled"][1] == out["graphs_compiled"][2]
    for (ids_g, lp_g, why_g), (ids_d, lp_d, why_d) in zip(out["graphs"], out["dynamic"], strict=True):
        assert ids_g == ids_d and why_g == why_d
        assert lp_g == pytest.approx(lp_d, abs=1e-4)


@pytest.mark.slow
def test_stop_check_on_the_answers_tail_agrees_with_the_whole_answer(smollm):
    """The engine decodes only an answer's last tokens to look for a stop sequence; at every prefix of
    real text (passages and answers with stop sequences spliced in, multi-byte characters included)
    it decides as the decode of the whole answer does."""
    from uqflow.data import load_dataset
    from uqflow.generation.hf import HFEngine

    engine = HFEngine(smollm, max_new_tokens=16)
    ds = load_dataset("squad_mini")
    texts = [ex.context[:300] + stop + ex.question for ex, stop in zip(ds.examples[:60], STOP_SEQUENCES * 10)]
    texts += ["Zoë Saldaña — “Café” Ünïcödé 東京 Question: x", "Paris\n", " Paris.\n\nQuestion", "Context :Context:"]
    checked = 0
    for text in texts:
        ids = smollm.tokenizer(text, add_special_tokens=False)["input_ids"]
        for k in range(1, len(ids) + 1):
            whole = any(s in engine.decode(ids[:k]) for s in engine.stop_sequences)
            if engine._stopped(ids[:k]) != whole:
                raise AssertionError(f"tail check disagrees at {k} of {text!r}")
            checked += whole
            if whole:
                break  # the engine stops at the first
    assert checked >= 60


@pytest.mark.slow
def test_sliding_window_model_shares_no_prefix_past_its_window(gemma):
    from uqflow.generation.hf import HFEngine

    engine = HFEngine(gemma, max_new_tokens=16)
    assert engine._sliding_window() == 512
    assert engine._shared_prefix(_prompts(gemma, "squad_mini", 4)) == []  # passages exceed the window
    assert len(engine._shared_prefix(_prompts(gemma, "trivia_mini", 4))) > 50


@pytest.mark.slow
def test_engine_agrees_with_transformers_generate(smollm):
    """An independent oracle: model.generate's greedy tokens and compute_transition_scores."""
    import torch

    from uqflow.generation.hf import HFEngine

    ids = _prompts(smollm, "trivia_mini", 6)
    gens = HFEngine(smollm, batch_size=6, max_new_tokens=10).generate(ids)
    model = smollm.model
    for prompt, g in zip(ids, gens):
        x = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=len(g.token_ids) or 1,
                                 return_dict_in_generate=True, output_logits=True, pad_token_id=smollm.tokenizer.pad_token_id)
        new = out.sequences[0, len(prompt):].tolist()
        assert new[: len(g.token_ids)] == g.token_ids
        if g.token_ids:
            lp = torch.stack([torch.log_softmax(step[0].float(), -1)[t] for step, t in zip(out.logits, g.token_ids)])
            assert lp.tolist() == pytest.approx(g.token_logprobs, abs=1e-4)


# ----------------------------------------------------------------- bitsandbytes on a CPU

@pytest.fixture(scope="module", params=["SmolLM2-135M-Instruct-8bit", "SmolLM2-135M-Instruct-4bit"])
def smollm_quantized(request):
    """The bundled SmolLM2 quantized by bitsandbytes as it loads, on the CPU (LLM.int8, NF4)."""
    from uqflow.models import MODELS, load_model, unload

    lm = load_model(MODELS.get(request.param), "cpu")
    yield lm
    unload(lm)


@pytest.mark.slow
def test_quantized_model_loads_on_a_cpu_and_its_records_agree(smollm_quantized):
    """LLM.int8 and NF4 layers on the CPU; stored text, token ids and log-probabilities agree as for
    the unquantized models; and, the answers depending on the batch, the same configuration gives
    the same batches and so the same records, whatever the device."""
    import bitsandbytes as bnb

    from uqflow.generation.hf import HFEngine

    lm = smollm_quantized
    layer = lm.model.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if lm.spec.quantization == "8bit" else bnb.nn.Linear4bit)
    assert lm.device == "cpu" and lm.model.device.type == "cpu" and not lm.batch_invariant
    ids = _prompts(lm, "trivia_mini", 24)
    engine = HFEngine(lm, max_new_tokens=12)
    assert engine.batch_size == 64 and not engine.batch_invariant  # as on a GPU
    assert HFEngine(lm, layout="graphs").layout == "dynamic"  # a static batch would change its batches
    gens = engine.generate(ids)
    _check_aligned(lm, gens)
    assert sum(bool(g.text) for g in gens) > len(ids) // 2  # the model answers
    for size in (0, 8):
        first = HFEngine(lm, batch_size=size, max_new_tokens=12).generate(ids)
        again = HFEngine(lm, batch_size=size, max_new_tokens=12).generate(ids)
        assert [(g.token_ids, g.token_logprobs, g.token_entropies) for g in first] == \
               [(g.token_ids, g.token_logprobs, g.token_entropies) for g in again]


@pytest.mark.slow
def test_quantized_engine_agrees_with_transformers_generate(smollm_quantized):
    """One prompt at a time and without the shared prefix, the engine's forward passes are those of
    model.generate, so even LLM.int8's batch-dependent arithmetic gives the same greedy tokens and
    log-probabilities: the records are the model's, not an artefact of the engine."""
    import torch

    from uqflow.generation.hf import HFEngine

    lm = smollm_quantized
    ids = _prompts(lm, "trivia_mini", 4)
    gens = HFEngine(lm, batch_size=1, max_new_tokens=10, share_prefix=False).generate(ids)
    for prompt, g in zip(ids, gens):
        x = torch.tensor([prompt])
        with torch.inference_mode():
            out = lm.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                    max_new_tokens=len(g.token_ids) or 1, return_dict_in_generate=True,
                                    output_logits=True, pad_token_id=lm.tokenizer.pad_token_id)
        assert out.sequences[0, len(prompt):].tolist()[: len(g.token_ids)] == g.token_ids
        if g.token_ids:
            lp = torch.stack([torch.log_softmax(step[0].float(), -1)[t] for step, t in zip(out.logits, g.token_ids)])
            assert lp.tolist() == pytest.approx(g.token_logprobs, abs=1e-4)


@pytest.mark.slow
def test_quantized_engine_does_not_shrink_its_batch_on_out_of_memory(smollm_quantized, monkeypatch):
    """Halving the batch on out-of-memory would make the records depend on the machine's memory:
    a quantized model's run stops and says which batch_size to set."""
    from uqflow.errors import ConfigError
    from uqflow.generation.hf import HFEngine

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError, by name as the engine sees it
        pass

    engine = HFEngine(smollm_quantized, max_new_tokens=4)

    def oom(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine, "_prefill", oom)
    with pytest.raises(ConfigError, match="set batch_size=32"):
        engine.generate(_prompts(smollm_quantized, "trivia_mini", 2))
    assert engine.batch_size == 64


def test_both_engines_offer_what_the_experiment_asks_of_an_engine():
    """The engine protocol's members: on the vLLM engine's class (vLLM runs on CUDA only, so it is
    read, not built) every method, and every attribute its constructor sets."""
    import inspect

    from uqflow.generation import Engine
    from uqflow.generation.hf import HFEngine
    from uqflow.generation.vllm_engine import VLLMEngine

    members = set(Engine.__annotations__) | {n for n, v in vars(Engine).items() if callable(v) and not n.startswith("_")}
    assert {"generate", "sample", "continuation_logprobs", "batch_invariant", "passes"} <= set(members)
    for cls in (HFEngine, VLLMEngine):
        init = inspect.getsource(cls.__init__)
        missing = [m for m in members if not hasattr(cls, m) and f"self.{m} =" not in init]
        assert missing == [], (cls.__name__, missing)


@pytest.mark.slow
def test_the_hf_engine_is_an_engine(smollm):
    from uqflow.generation import Engine, make_engine

    assert isinstance(make_engine("hf", smollm), Engine)
