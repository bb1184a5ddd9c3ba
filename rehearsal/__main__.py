"""``python -m rehearsal [--out .study-cache] [--steps N]``: build the offline rehearsal cache
(what ``make study-cache`` runs) and print the environment that uses it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rehearsal.build import DEFAULT_STEPS, build, environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".study-cache", help="the folder to fill (default: .study-cache)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per model")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    try:
        build(Path(args.out), steps=args.steps)
    except RuntimeError as e:  # a missing source package or tool, with the way to get it
        print(f"Error: {e}", file=sys.stderr)
        return 1
    env = " ".join(f"{k}={v}" for k, v in environment(args.out).items())
    print(f"\nThe rehearsal cache is ready. Run the reference study's names offline with:\n  export {env}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
