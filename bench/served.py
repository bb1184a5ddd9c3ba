"""The served engine against the in-process one, on this machine, in one run: the bundled SmolLM2
answered greedily by llama.cpp's server (started here, as `make serve` does) and by the in-process
transformers engine, on the same prompts; each one's seconds per question, their ratio, and how
their records agree (the share of identical answers, G-NLL's largest and median difference where
answers are identical). Nothing is asserted: the figures are the result.

    python bench/served.py --n 64 [--slots 4] [--threads 1]

Both engines share the machine's cores with nothing else of the benchmark: the server runs while
the in-process engine does not, and the other way round.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _llama_server():
    spec = importlib.util.spec_from_file_location("llama_server", ROOT / "scripts" / "llama_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="questions")
    ap.add_argument("--dataset", default="trivia_mini")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--slots", type=int, default=4, help="the server's slots (and the engine's concurrency)")
    ap.add_argument("--threads", type=int, default=1, help="the server's threads")
    args = ap.parse_args()

    import dataclasses

    from uqflow.checks import resolve
    from uqflow.config import RunConfig
    from uqflow.experiment import select_examples
    from uqflow.generation import load_for, make_engine, unload
    from uqflow.generation.served import agreement
    from uqflow.models.registry import MODELS
    from uqflow.prompts import build_prompts, draw_few_shot

    port = free_port()
    served = MODELS.get("SmolLM2-135M-Instruct-served")
    served = dataclasses.replace(served, served=dataclasses.replace(served.served, url=f"http://127.0.0.1:{port}/v1",
                                                                    concurrency=args.slots))
    cfg = RunConfig(model="SmolLM2-135M-Instruct", dataset=args.dataset, num_samples=args.n,
                    max_new_tokens=args.max_new_tokens, device="cpu")
    spec, ds = resolve(cfg)
    examples, _ = select_examples(ds, cfg)
    lm = load_for(spec, "cpu")
    shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)
    prompts, _ = build_prompts(examples, shots, lm.tokenizer, instruct=spec.instruct, opts=cfg.prompt_options,
                               max_prompt_tokens=2048 - cfg.max_new_tokens)  # the server's context a slot
    ids = [p.token_ids for p in prompts]
    hf = make_engine("hf", lm, max_new_tokens=cfg.max_new_tokens)
    hf.generate(ids[:4])  # warm-up, not timed
    t = time.perf_counter()
    reference = hf.generate(ids)
    hf_s = time.perf_counter() - t
    unload(lm)

    proc = _llama_server().start("SmolLM2-135M-Instruct", port=port, threads=args.threads, slots=args.slots)
    try:
        slm = load_for(served, "cpu")
        engine = make_engine("auto", slm, max_new_tokens=cfg.max_new_tokens)
        engine.generate(ids[:4])  # warm-up, not timed
        t = time.perf_counter()
        answers = engine.generate(ids)
        served_s = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(30)
    agree = agreement(reference, answers)
    n = len(ids)
    print(f"{n} questions of {args.dataset}, SmolLM2-135M-Instruct, greedy, max {args.max_new_tokens} new tokens")
    print(f"in-process (transformers, float32 from the de-quantized GGUF): {hf_s / n:.3f} s/question")
    print(f"served (llama-server, Q4_1 kernels, {args.slots} slots, {args.threads} thread(s), {args.slots} requests "
          f"in flight): {served_s / n:.3f} s/question")
    print(f"served / in-process time: {served_s / hf_s:.2f}x")
    print(f"identical answers: {agree['identical']:.1%}; where identical, a token's log-probability differs by "
          f"{agree['token_median_diff']:.3f} (median), {agree['token_p99_diff']:.3f} (99th percentile), "
          f"{agree['token_max_diff']:.3f} (largest) nats; G-NLL by {agree['g_nll_median_diff']:.3f} (median), "
          f"{agree['g_nll_max_diff']:.3f} (largest); G-NLL's rank correlation {agree['g_nll_spearman']:.3f} (Spearman)")


if __name__ == "__main__":
    main()
