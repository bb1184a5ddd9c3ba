"""Loading a bundled model: de-quantizing its GGUF file (what every load would cost without the
cache) against loading uqflow's cached converted copy, side by side in one process.

    python bench/model_cache.py [--model Gemma-3-270M]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from uqflow.models import MODELS, load_model, unload
    from uqflow.models.loading import bundled_gguf, ensure_converted

    spec = MODELS.get(args.model)
    ensure_converted(spec)  # the cache exists before timing, as after a first run
    gguf = bundled_gguf(spec)
    t = time.perf_counter()
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    t_gguf = time.perf_counter() - t
    t = time.perf_counter()
    lm = load_model(spec, "cpu")
    t_cache = time.perf_counter() - t
    unload(lm)
    print(f"{spec.name}: GGUF de-quantization {t_gguf:.1f} s, cached copy {t_cache:.2f} s, "
          f"ratio {t_gguf / t_cache:.0f}x")


if __name__ == "__main__":
    main()
