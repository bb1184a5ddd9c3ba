"""Generation throughput: uqflow's batched engine against the reference one-at-a-time loop.

Prints questions per second for both on the same prompts and model, their ratio, how many answers
agree, and the share of a whole ``uqflow run`` (model load, relevance, scoring, MLflow logging
included) spent outside generation. Targets on a 2-core CPU with SmolLM2-135M-Instruct on
trivia_mini (>= 128 questions): ratio >= 10, outside-generation share <= 15%.

    python bench/throughput.py --n 128
    python bench/throughput.py --n 64 --batch-size 16 --max-new-tokens 40 --layouts dynamic,static,graphs

``--layouts`` also times the engine in other decode layouts on the same prompts (each after a first
call, which for ``graphs`` compiles), as ratios to the default layout, with the answers that differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--dataset", default="trivia_mini")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--layouts", default="", help="decode layouts also timed (uqflow.generation.hf.LAYOUTS)")
    args = ap.parse_args()

    import mlflow

    from reference_loop import reference_predict
    from uqflow.config import RunConfig
    from uqflow.checks import resolve
    from uqflow.experiment import run_experiment, select_examples
    from uqflow.generation.hf import HFEngine
    from uqflow.models import load_model, unload
    from uqflow.prompts import STOP_SEQUENCES, build_prompts, draw_few_shot

    cfg = RunConfig(model=args.model, dataset=args.dataset, num_samples=args.n,
                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, device=args.device)
    spec, ds = resolve(cfg)
    examples, _ = select_examples(ds, cfg)
    lm = load_model(spec, cfg.device)
    shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)
    prompts, _ = build_prompts(examples, shots, lm.tokenizer, instruct=spec.instruct, opts=cfg.prompt_options,
                               max_prompt_tokens=lm.context_length - cfg.max_new_tokens)
    n = len(prompts)
    special = not (spec.instruct and cfg.chat_template and lm.tokenizer.chat_template)

    engine = HFEngine(lm, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
    engine.generate([p.token_ids for p in prompts[:8]])  # warm-up
    t = time.perf_counter()
    gens = engine.generate([p.token_ids for p in prompts])
    t_engine = time.perf_counter() - t

    layouts = []
    for layout in filter(None, (x.strip() for x in args.layouts.split(","))):
        alt = HFEngine(lm, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, layout=layout)
        t = time.perf_counter()
        alt.generate([p.token_ids for p in prompts])  # the first call: compiles for graphs
        first = time.perf_counter() - t
        t = time.perf_counter()
        alt_gens = alt.generate([p.token_ids for p in prompts])
        dt = time.perf_counter() - t
        layouts.append((alt.layout, first, dt, sum(a.token_ids != b.token_ids for a, b in zip(alt_gens, gens))))

    reference_predict(lm.model, lm.tokenizer, prompts[0].text, STOP_SEQUENCES, cfg.max_new_tokens, special)
    t = time.perf_counter()
    ref = [reference_predict(lm.model, lm.tokenizer, p.text, STOP_SEQUENCES, cfg.max_new_tokens, special)
           for p in prompts]
    t_loop = time.perf_counter() - t
    same = sum(g.text == r[0] for g, r in zip(gens, ref))
    unload(lm)

    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        os.chdir(tmp)  # a SQLite store keeps its artifacts in ./mlruns: in the temporary folder too
        try:
            t = time.perf_counter()
            result = run_experiment(cfg)
            t_run = time.perf_counter() - t
        finally:
            os.chdir(here)
    gen_s = result.metrics["generation_seconds"]
    rel_s = result.metrics["relevance_seconds"]
    score_s = result.metrics["scoring_seconds"]

    print(f"model {spec.name} on {lm.device}, dataset {args.dataset}, {n} questions, "
          f"max_new_tokens {cfg.max_new_tokens}, batch size {engine.batch_size}")
    print(f"reference loop (batch 1): {n / t_loop:8.2f} questions/s  ({t_loop:.1f} s)")
    print(f"uqflow engine           : {n / t_engine:8.2f} questions/s  ({t_engine:.1f} s)")
    print(f"speed-up (engine / loop): {t_loop / t_engine:8.2f}x")
    print(f"identical answers       : {same}/{n}")
    for layout, first, dt, differ in layouts:
        print(f"layout {layout:<16}: {n / dt:8.2f} questions/s  ({dt:.1f} s; first call {first:.1f} s), "
              f"{t_engine / dt:.2f}x the default layout, {differ} of {n} answers differ")
    print(f"whole uqflow run        : {t_run:.1f} s, generation {gen_s:.1f} s, "
          f"outside generation {100 * (t_run - gen_s) / t_run:.1f}%")
    print(f"  of which relevance (TokenSAR) {rel_s:.1f} s, other scoring {score_s - rel_s:.1f} s, "
          f"load + logging {t_run - gen_s - score_s:.1f} s")


if __name__ == "__main__":
    main()
