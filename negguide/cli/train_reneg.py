"""``negguide train-reneg``: learn a negative embedding for a model and a reward.

examples:
  # the bundled ShapeWorld model and reward, ShapeWorld training captions
  negguide train-reneg --out runs/reneg --reward shapeworld-log --init-text "a shape and a shape" --steps 600 \\
      --batch-size 32 --lr 1e-2 --warmup-steps 20 --checkpoint-every 25
  # the bundled embedding's command: two classifiers, the bundled one and one trained with
  # `python -m experiments.shapeworld_reward.train --out runs/reward-seed1 --seed 1 --steps 1000`
  negguide train-reneg --out runs/reneg --reward shapeworld-log@0.5 --reward shapeworld-log=runs/reward-seed1@0.5 \\
      --init-text "a shape and a shape" --steps 600 --batch-size 32 --lr 1e-2 --warmup-steps 20 --checkpoint-every 25
  # continue training a saved embedding (yours, or a published .bin converted with NegativeEmbedding.from_bin)
  negguide train-reneg --init-embedding assets/shapeworld/reneg/negative_embedding.safetensors --out runs/more \\
      --reward shapeworld-log --steps 300 --batch-size 64 --lr 3e-3
  # your checkpoint, prompts from a file, CLIP score from a local folder, two processes (GPUs, or gloo on a CPU)
  accelerate launch --multi_gpu --num_processes 2 -m negguide.cli train-reneg --model ./sd15 --prompts-file prompts.txt \\
      --reward clip=./clip-vit-large --out runs/sd15-reneg --guidance-scale 7.5 --num-inference-steps 30 --late-steps 10
  # several rewards with weights
  negguide train-reneg --reward shapeworld@1.0 --reward clip=./clip@0.1 --out runs/mix

  # ReNeg's per-sample variant: the bundled global embedding tuned for each prompt (at most 10 steps each)
  negguide train-reneg --per-sample-from assets/shapeworld/reneg/negative_embedding.safetensors \
      --prompts "a red circle above a blue square" "a green triangle and a yellow circle" --out runs/per-sample \
      --lr 3e-2 --late-steps 20

A run resumes from OUT/checkpoint when it exists; it writes OUT/negative_embedding.safetensors and
OUT/reward_curve.png. Use the result with NegativeEmbedding.load(path, pipe).negative_kwargs(). A per-sample run
writes OUT/per_sample/ (one file per prompt and prompts.json; it resumes prompt by prompt): load it with
negguide.reneg.load_per_sample(folder, pipe).
"""

from __future__ import annotations

import argparse
import os

from negguide.cli.errors import ArgumentParser, user_input
from negguide.cli.flags import (
    add_setting_flags,
    add_training_inputs,
    check_image_size,
    check_model,
    load_model,
    ranged,
    read_training_prompts,
)
from negguide.reneg.config import SELECTIONS, ReNegConfig
from negguide.rewards.registry import build_reward, check_prompts_for_reward

PER_SAMPLE_STEPS = 10  # the paper's per-sample budget
FLAGS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "guidance_scale",
    "num_inference_steps",
    "late_steps",
    "gradient_accumulation_steps",
    "checkpoint_every",
    "seed",
    "height",
    "width",
    "gradient_checkpointing",
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="negguide train-reneg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_inputs(parser, "output folder (checkpoints, embedding, reward curve)")
    parser.add_argument(
        "--reward",
        action="append",
        help="shapeworld (judged probability) | shapeworld-log (its log), either =FOLDER for other "
        "classifier weights | clip=PATH | pickscore=PATH, optional @WEIGHT (repeatable)",
    )
    parser.add_argument("--init-text", default="", help="initialise from this text's embedding (default: empty text)")
    parser.add_argument(
        "--init-embedding",
        default=None,
        metavar="FILE.safetensors",
        help="initialise from a saved embedding instead (continue training yours, or a published one "
        "converted with NegativeEmbedding.from_bin); checked against the model before training",
    )
    parser.add_argument(
        "--max-sequence-length",
        type=ranged(int, 0, 512, "--max-sequence-length"),
        default=None,
        help="T5 tokens for SD3/Flux (the bundled model: 0)",
    )
    parser.add_argument(
        "--per-sample-from",
        default=None,
        metavar="GLOBAL.safetensors",
        help="per-sample variant: tune this global embedding for each prompt instead of training one",
    )
    parser.add_argument(
        "--patience",
        type=ranged(int, 1, 100, "--patience"),
        default=None,
        help="per-sample: stop after this many steps without a better reward (default 3)",
    )
    parser.add_argument(
        "--selection",
        choices=SELECTIONS,
        default=None,
        help="per-sample: score steps by complete samples (final, default) or the one-step objective",
    )
    parser.add_argument(
        "--confirm-samples",
        type=ranged(int, 0, 1024, "--confirm-samples"),
        default=None,
        help="per-sample: keep a tuned embedding only if it also wins on this many fresh samples (default 0: off)",
    )
    parser.add_argument(
        "--resume-with-changed-config",
        action="store_true",
        help="resume OUT/checkpoint even when these settings differ from the ones it was saved with (the "
        "change is recorded in it); without it such a resume is refused, naming the settings that differ",
    )
    steps = ReNegConfig.field_specs()["steps"]["default"]
    add_setting_flags(  # --steps: None until parsed, since --per-sample-from changes its default
        parser,
        ReNegConfig,
        FLAGS,
        overrides={"steps": {"default": None, "shown": f"{steps}; {PER_SAMPLE_STEPS} with --per-sample-from"}},
    )
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    per_sample_options = {
        f: getattr(args, f) for f in ("patience", "selection", "confirm_samples") if getattr(args, f) is not None
    }
    if per_sample_options and not args.per_sample_from:
        parser.error(
            f"--{next(iter(per_sample_options)).replace('_', '-')} is for the per-sample variant: add "
            "--per-sample-from GLOBAL"
        )
    if args.init_embedding and (args.init_text or args.per_sample_from):
        parser.error(
            f"--init-embedding starts the global embedding from a file; drop "
            f"{'--init-text' if args.init_text else '--per-sample-from'} (per-sample tuning starts from "
            "--per-sample-from itself)"
        )
    if args.init_embedding and not os.path.isfile(args.init_embedding):
        parser.error(f"--init-embedding {args.init_embedding!r} is not a file; pass a .safetensors embedding")
    if args.steps is None:
        args.steps = PER_SAMPLE_STEPS if args.per_sample_from else ReNegConfig.field_specs()["steps"]["default"]

    from negguide.core.training_io import check_writable, first_last_means
    from negguide.reneg.embedding import NegativeEmbedding
    from negguide.reneg.per_sample import fit_per_sample
    from negguide.reneg.trainer import ReNegTrainer
    from negguide.shapeworld.assets import DEFAULT_MODEL

    with user_input():
        check_model(args.model)  # before the prompts: a ShapeWorld model folder changes their default
    prompts = read_training_prompts(args)
    sequence = args.max_sequence_length if args.max_sequence_length is not None else (0 if args.model is None else None)
    pipeline_kwargs = {} if sequence is None else {"max_sequence_length": sequence}
    model = args.model or DEFAULT_MODEL
    with user_input():  # everything the flags name is checked before any training step
        config = ReNegConfig(
            prompts=prompts,
            init_text=args.init_text,
            output_dir=args.out,
            pipeline_kwargs=pipeline_kwargs,
            **{n: getattr(args, n) for n in FLAGS},
        )
        check_writable(args.out)  # before loading anything
        # the files first (ValueError naming a damaged one), then the model they must fit
        start = NegativeEmbedding.load(args.per_sample_from) if args.per_sample_from else None
        init = NegativeEmbedding.load(args.init_embedding) if args.init_embedding else None
        reward = build_reward(args.reward)
        check_prompts_for_reward(reward, prompts)
        from negguide.perpneg.pipeline import PerpNegPipeline

        pipe = load_model(model, PerpNegPipeline.from_pretrained)
        check_image_size(pipe, args.height, args.width)
        for flag, path, embedding in (
            ("--per-sample-from", args.per_sample_from, start),
            ("--init-embedding", args.init_embedding, init),
        ):
            if embedding is not None:
                try:
                    embedding.check_compatible(pipe)  # names the mismatch for another model
                except ValueError as error:
                    raise ValueError(f"{flag} {path!r}: {error}") from None
        if init is not None:
            init.metadata["init_embedding"] = os.path.basename(args.init_embedding)
        trainer = (
            None
            if args.per_sample_from
            else ReNegTrainer(pipe, reward, config, init=init, allow_config_change=args.resume_with_changed_config)
        )
    if args.per_sample_from:
        folder = os.path.join(args.out, "per_sample")
        tuned = fit_per_sample(
            pipe, reward, start, config, folder, **per_sample_options
        )  # flags not given: per_sample_embedding's defaults
        print(f"wrote {len(tuned)} per-sample embeddings to {folder} (load: negguide.reneg.load_per_sample)")
        return
    embedding = trainer.train()
    embedding.metadata["base_model"] = model if args.model else "negguide ShapeWorld (assets/shapeworld/sd3)"
    if trainer.accelerator.is_main_process:
        path = embedding.save(os.path.join(args.out, "negative_embedding.safetensors"))
        first, last, n = first_last_means(trainer.history, "reward")
        print(
            f"wrote {path} and {os.path.join(args.out, 'reward_curve.png')} "
            f"(reward, mean of the first / last {n} steps: {first:.3f} -> {last:.3f})"
        )
