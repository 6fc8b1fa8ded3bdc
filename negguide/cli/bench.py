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
from negguide.cli.flags import add_setting_flags, check_model, load_model
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
    from negguide.core.training_io import check_writable

    with user_input():  # every flag is checked before the model loads
        settings = (BenchSettings.quick if args.quick else BenchSettings)(perp_neg_weight=args.perp_neg_weight)
        unknown = [m for m in args.methods or () if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}")
        check_model(args.model, hub_ok=False)
        check_writable(args.out)
    start = time.time()
    with user_input():
        pipe = load_model(args.model, load_bench_pipeline, hub_ok=False)
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
