"""What the sampling-based measures cost against the greedy pass, on this machine, in one run.

On the same questions, prompts and loaded model it times: the greedy pass (what G-NLL needs, and
all it needs), N sampled answers per question (predictive entropy), p(True)'s extra pass, the
entailment judge's clustering of the samples (semantic entropy, and the entailment graph's DegMat,
EigValLaplacian, Eccentricity and KLE), and the pairwise record's similarities (CoCoA, sentence SAR)
and samples' token relevance (SAR), and prints each as seconds per
question and as a ratio to the greedy pass, with forward passes counted as uqflow records them
(scoring/cost.py). Nothing is asserted: the ratios are the figure.

    python bench/sampling.py --n 32 --num-generations 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--dataset", default="trivia_mini")
    ap.add_argument("--n", type=int, default=32, help="questions")
    ap.add_argument("--num-generations", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--entailment", default="embedding:all-MiniLM-L6-v2")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from uqflow.config import RunConfig
    from uqflow.checks import resolve
    from uqflow.experiment import select_examples
    from uqflow.scoring.llm import ENTAILMENT_WORDS, llm_choose, p_true_inputs
    from uqflow.generation import make_engine
    from uqflow.models import load_model
    from uqflow.prompts import build_prompts, draw_few_shot, p_true_prompt
    from uqflow.scoring.cost import Cost
    from uqflow.scoring.relevance import load_similarity
    from uqflow.scoring.semantic import make_entailment, parse_embedding_name, semantic_clusters

    cfg = RunConfig(model=args.model, dataset=args.dataset, num_samples=args.n, max_new_tokens=args.max_new_tokens,
                    num_generations=args.num_generations, entailment=args.entailment, device=args.device)
    spec, ds = resolve(cfg)
    examples, _ = select_examples(ds, cfg)
    lm = load_model(spec, args.device)
    shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)
    prompts, _ = build_prompts(examples, shots, lm.tokenizer, instruct=spec.instruct, opts=cfg.prompt_options,
                               max_prompt_tokens=lm.context_length - cfg.max_new_tokens)
    ids = [p.token_ids for p in prompts]
    n = len(ids)
    engine = make_engine("hf", lm, max_new_tokens=cfg.max_new_tokens)
    engine.generate(ids[: min(4, n)])  # warm-up, not timed
    engine.passes = {"greedy": 0, "sampled": 0}
    engine.tokens = {"greedy": 0, "sampled": 0}

    t = time.perf_counter()
    gens = engine.generate(ids)
    greedy = Cost(engine.passes["greedy"], engine.tokens["greedy"], time.perf_counter() - t)
    t = time.perf_counter()
    samples = engine.sample(ids, cfg.num_generations, temperature=cfg.temperature, seed=cfg.seed)
    sampling = Cost(engine.passes["sampled"], engine.tokens["sampled"], time.perf_counter() - t)
    texts = [[s.text for s in row] for row in samples]
    questions = [p_true_prompt(p.example.question, ts, g.text, p.example.context) for p, ts, g in zip(prompts, texts, gens)]
    pt_ids, conts = p_true_inputs(lm.tokenizer, spec.instruct, questions)
    t = time.perf_counter()
    engine.continuation_logprobs(pt_ids, conts)
    p_true = Cost(n, 0, time.perf_counter() - t)
    judge_cost = Cost()
    with tempfile.TemporaryDirectory() as tmp:  # an empty judgment cache: every pair is judged
        generate = llm_choose(args.entailment[4:], ENTAILMENT_WORDS, None, args.device, lm, cost=judge_cost) \
            if args.entailment.startswith("llm:") else None
        embedding = parse_embedding_name(args.entailment)
        model = make_entailment(args.entailment, generate=generate, cache_path=Path(tmp) / "judgments.sqlite",
                                device=args.device,
                                similarity=load_similarity(embedding[0], "cpu") if embedding else None)
        t = time.perf_counter()
        _, stats = semantic_clusters([p.example.question for p in prompts], texts, model)
        entail = Cost(judge_cost.passes or stats.model_calls, judge_cost.tokens, time.perf_counter() - t)

    # the pairwise record that the measures of sample consistency read (scoring/pipeline.add_pairwise)
    import pandas as pd

    from uqflow.scoring.pipeline import add_pairwise
    from uqflow.scoring.relevance import pair_similarity_model

    frame = pd.DataFrame({"question": [p.example.question for p in prompts], "answer": [g.text for g in gens],
                          "samples": texts, "sample_token_ids": [[s.token_ids for s in row] for row in samples]})
    pair_model = pair_similarity_model(cfg.pair_similarity)
    _, parts = add_pairwise(frame, engine.decode, load_similarity(pair_model, "cpu"))
    pairwise, relevance = parts["pairwise"], parts["sample_relevance"]

    rows = [("G-NLL (greedy pass)", greedy), ("+ N samples (predictive entropy)", sampling),
            ("+ p(True) pass", p_true), ("+ entailment clustering", entail),
            (f"+ pairwise similarities ({pair_model})", pairwise), ("+ samples' token relevance", relevance),
            ("semantic entropy, DegMat, KLE (samples + clustering)", sampling + entail),
            ("CoCoA, sentence SAR (samples + similarities)", sampling + pairwise),
            ("SAR (samples + similarities + relevance)", sampling + pairwise + relevance)]
    print(f"{spec.name} x {cfg.dataset}: {n} questions, N={cfg.num_generations} samples at temperature "
          f"{cfg.temperature}, max_new_tokens {cfg.max_new_tokens}, entailment {args.entailment}, device {lm.device}")
    print(f"{'':52s} {'s/question':>11s} {'passes/q':>9s} {'x greedy time':>14s} {'x greedy passes':>16s}")
    for name, c in rows:
        print(f"{name:52s} {c.seconds / n:11.4f} {c.passes / n:9.1f} {c.seconds / greedy.seconds:14.2f} "
              f"{c.passes / max(greedy.passes, 1):16.2f}")
    print(f"clustering: {stats.pairs_classified} pairs judged ({stats.exact_matches} samples matched another "
          f"exactly and needed no judgment)")


if __name__ == "__main__":
    main()
