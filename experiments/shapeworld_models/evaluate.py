"""Judge a ShapeWorld model folder or a training checkpoint: prompt accuracy on full, partial and two-object captions.

python -m experiments.shapeworld_models.evaluate --model assets/shapeworld/sd3 --n 8 --guidance 3 5
python -m experiments.shapeworld_models.evaluate --ckpt /tmp/shapeworld_run --n 8
"""

from __future__ import annotations

import torch

from negguide.shapeworld.evaluate import PROMPT_SETS, evaluate_model, load_pipeline


def main(argv=None) -> None:
    """``python -m experiments.shapeworld_models.evaluate --model DIR | --ckpt DIR [--n 8] [--guidance 3 5 7]``."""
    import argparse
    import json

    p = argparse.ArgumentParser(description="Judge a ShapeWorld model")
    p.add_argument("--model", help="diffusers folder")
    p.add_argument("--ckpt", help="training run folder (its checkpoint's EMA weights)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    p.add_argument("--max-sequence-length", type=int, default=None, help="zero T5 tokens (diffusers default 256)")
    p.add_argument("--sets", nargs="+", default=list(PROMPT_SETS))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    if (args.model is None) == (args.ckpt is None):
        raise SystemExit("pass exactly one of --model DIR or --ckpt DIR")
    if args.model:
        pipe = load_pipeline(args.model)
    else:
        from experiments.shapeworld_models import checkpoint as ck
        from experiments.shapeworld_models.train_model import load_pipeline_from_checkpoint
        from experiments.shapeworld_models.train_unet import load_sd_checkpoint

        resumed = ck.load(args.ckpt)
        sd = resumed is not None and resumed.meta.get("stage") == "unet"
        pipe, state = (load_sd_checkpoint if sd else load_pipeline_from_checkpoint)(args.ckpt, resumed=resumed)
        print("checkpoint step", state["step"])
    kw = {} if args.max_sequence_length is None else {"max_sequence_length": args.max_sequence_length}
    sets = {k: PROMPT_SETS[k] for k in args.sets}
    for g in args.guidance:
        rep = evaluate_model(pipe, args.n, args.seed, g, args.steps, sets=sets, **kw)
        print(json.dumps({k: v for k, v in rep.items() if k != "per_prompt"}))
        print(json.dumps(rep["per_prompt"]))


if __name__ == "__main__":
    main()
