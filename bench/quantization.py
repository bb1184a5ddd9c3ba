"""What bitsandbytes quantization costs a bundled model: speed, quality and batch-composition drift.

For a model and its ``-8bit`` (LLM.int8) and ``-4bit`` (NF4) registry variants, on the same N
prompts (those of a ``uqflow run`` of the dataset, seed 10), prints side by side:

- questions per second with the automatic batch size (as a run generates), the best of
  ``--rounds`` rounds taken in turn, so that a busy machine slows every model alike, and the
  ratio to the unquantized model;
- accuracy (SQuAD token F1 >= 0.5, the runs' default judge) and AUROC of G-NLL;
- drift: the same prompts generated one at a time (batch_size=1) and 64 at a time: the share of
  answers that change and the largest |ΔG-NLL| (over all questions, and over those whose tokens
  agree), and whether a second batched pass repeats the first exactly.

LLM.int8 computes the input columns that hold an outlier (|x| >= 6) in any row of the batch in
16-bit, and NF4 computes in bf16, whose rounding changes with the batch's shape, so both can
answer differently with other questions in the batch; the unquantized model computes each row on
its own (up to float32 rounding). Nothing here asserts a time: it prints figures.

    python bench/quantization.py                    # SmolLM2-135M-Instruct, 64 trivia_mini questions, CPU
    python bench/quantization.py --model Gemma-3-270M --variants 8bit --n 32
"""

from __future__ import annotations

import argparse
import logging
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct", help="the unquantized registry entry")
    ap.add_argument("--variants", default="8bit,4bit", help="registry suffixes of its quantized entries")
    ap.add_argument("--dataset", default="trivia_mini")
    ap.add_argument("--n", type=int, default=64, help="questions")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2, help="timed passes per model, taken in turn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-drift", action="store_true", help="skip the batch 1 vs 64 comparison")
    args = ap.parse_args()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast to float16", per layer

    import numpy as np

    from uqflow.config import RunConfig
    from uqflow.checks import resolve
    from uqflow.experiment import select_examples
    from uqflow.generation.hf import HFEngine
    from uqflow.models import MODELS, load_model
    from uqflow.models.loading import batch_dependence
    from uqflow.prompts import build_prompts, draw_few_shot
    from uqflow.scoring.correctness import f1_correct
    from uqflow.scoring.evaluation import auroc
    from uqflow.scoring.uncertainty import g_nll

    names = [args.model] + [f"{args.model}-{v}" for v in args.variants.split(",") if v]
    cfg = RunConfig(model=args.model, dataset=args.dataset, num_samples=args.n, max_new_tokens=args.max_new_tokens,
                    device=args.device)
    spec, ds = resolve(cfg)
    examples, _ = select_examples(ds, cfg)
    shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)

    models, prompts, engines = {}, {}, {}
    for name in names:
        t = time.perf_counter()
        lm = models[name] = load_model(MODELS.get(name), args.device)
        built, _ = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct, opts=cfg.prompt_options,
                                 max_prompt_tokens=lm.context_length - cfg.max_new_tokens)
        prompts[name] = [p.token_ids for p in built]
        engines[name] = HFEngine(lm, max_new_tokens=cfg.max_new_tokens)
        engines[name].generate(prompts[name][:4])  # warm-up
        print(f"loaded {name} ({lm.spec.quantization}) on {lm.device} in {time.perf_counter() - t:.1f} s, "
              f"dtype {lm.model.dtype}, automatic batch size {engines[name].batch_size}", flush=True)
    refs = [list(p.example.references) for p in built]
    n = len(refs)

    seconds = {name: [] for name in names}
    gens = {}
    for r in range(args.rounds):
        for name in names:
            t = time.perf_counter()
            gens[name] = engines[name].generate(prompts[name])
            seconds[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()), flush=True)

    rows = {}
    for name in names:
        correct = np.array([f1_correct(g.text, ref) for g, ref in zip(gens[name], refs)])
        scores = np.array([g_nll(g.token_logprobs) for g in gens[name]])
        qps = n / min(seconds[name])
        rows[name] = {"qps": qps, "ratio": qps / (n / min(seconds[names[0]])), "accuracy": correct.mean(),
                      "auroc": auroc(correct, scores) if 0 < correct.sum() < n else float("nan")}

    if not args.no_drift:
        for name in names:
            lm = models[name]
            one = HFEngine(lm, batch_size=1, max_new_tokens=cfg.max_new_tokens).generate(prompts[name])
            many = HFEngine(lm, batch_size=64, max_new_tokens=cfg.max_new_tokens).generate(prompts[name])
            again = HFEngine(lm, batch_size=64, max_new_tokens=cfg.max_new_tokens).generate(prompts[name])
            d_all = [abs(g_nll(a.token_logprobs) - g_nll(b.token_logprobs)) for a, b in zip(one, many)]
            d_same = [d for d, a, b in zip(d_all, one, many) if a.token_ids == b.token_ids]
            rows[name].update({
                "changed": sum(a.text != b.text for a, b in zip(one, many)) / n,
                "tokens_changed": sum(a.token_ids != b.token_ids for a, b in zip(one, many)) / n,
                "max_d": max(d_all), "max_d_same": max(d_same, default=float("nan")),
                "repeat": all(a.token_ids == b.token_ids and a.token_logprobs == b.token_logprobs
                              for a, b in zip(many, again)),
            })
            print(f"drift measured for {name}", flush=True)

    print()
    print(f"{args.model} and its quantized variants on {args.dataset}, {n} questions, max_new_tokens "
          f"{cfg.max_new_tokens}, device {models[names[0]].device}, best of {args.rounds} rounds")
    head = f"{'model':<32} {'quant':>11} {'q/s':>7} {'vs base':>8} {'accuracy':>9} {'AUROC G-NLL':>12}"
    if not args.no_drift:
        head += f" {'answers changed':>16} {'max|dG-NLL|':>12} {'same tokens':>12} {'repeats':>8}"
    print(head)
    for name in names:
        r = rows[name]
        line = (f"{name:<32} {models[name].spec.quantization:>11} {r['qps']:7.2f} {r['ratio']:7.2f}x "
                f"{r['accuracy']:9.3f} {r['auroc']:12.3f}")
        if not args.no_drift:
            line += (f" {100 * r['changed']:15.1f}% {r['max_d']:12.4f} {r['max_d_same']:12.2e} "
                     f"{'yes' if r['repeat'] else 'NO':>8}")
        print(line)
    if not args.no_drift:
        print("answers changed / max|dG-NLL|: batch_size=1 against batch_size=64 on the same prompts (max|dG-NLL| over "
              "all questions; 'same tokens': over those whose answer tokens agree); repeats: a second batch-64 pass "
              "gives identical tokens and log-probabilities")
    for name in names:
        note = batch_dependence(models[name].spec)
        if note:
            print(f"{name}: {note}")


if __name__ == "__main__":
    main()
