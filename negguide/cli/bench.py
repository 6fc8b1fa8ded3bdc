"""``negguide bench``: the ShapeWorld efficacy benchmark (each method's paper claim as a judged number).

    negguide bench --out outputs/bench            # full run
    negguide bench --quick --out outputs/compare  # the smoke subset (about a minute)

Writes OUT/results.md (also printed), OUT/results.json and one PNG grid per scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from negguide.cli.errors import ArgumentParser, user_input
from negguide.cli.flags import add_setting_flags
from negguide.shapeworld.bench import (
    METHODS,
    QUICK,
    SCENARIOS,
    BenchSettings,
    load_bench_pipeline,
    load_plugins,
    markdown_table,
    run_bench,
    save_grids,
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="negguide bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="diffusers folder (default: the bundled ShapeWorld model)")
    parser.add_argument("--out", default="outputs/bench", help="folder for results.md, results.json and grids")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{len(QUICK['seeds'])} seeds of {QUICK['images_per_seed']} images: the smoke subset",
    )
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    load_plugins()
    parser.add_argument("--methods", nargs="+", default=None, help=f"default: all registered ({', '.join(METHODS)})")
    add_setting_flags(parser, BenchSettings, ["perp_neg_weight"])
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with user_input():
        settings = (BenchSettings.quick if args.quick else BenchSettings)(perp_neg_weight=args.perp_neg_weight)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    with user_input():
        pipe = load_bench_pipeline(args.model)
    results = run_bench(pipe, args.scenarios, args.methods, settings)
    table = markdown_table(results)
    grids = save_grids(results, args.out)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({k: v for k, v in results.items() if k != "images"}, f, indent=1)
    print(table)
    print(
        f"wrote {os.path.join(args.out, 'results.md')}, results.json and {', '.join(grids)} "
        f"in {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
