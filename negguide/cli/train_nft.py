"""``negguide train-nft``: fine-tune a LoRA with DiffusionNFT (online RL on the forward process) from a reward.

examples:
  # the bundled ShapeWorld flow model and reward, ShapeWorld training captions, judged accuracy plotted
  negguide train-nft --out runs/nft --steps 200 --group-size 8 --prompts-per-step 4 --num-inference-steps 10
  # your SD checkpoint, prompts from a file, CLIP score, CFG 4.5 rollouts, two processes (GPUs, or gloo on a CPU)
  accelerate launch --multi_gpu --num_processes 2 -m negguide.cli train-nft --model ./sd15 \\
      --prompts-file prompts.txt --reward clip=./clip-vit-large --guidance-scale 4.5 --out runs/sd15-nft
  # the positive-only baseline (the model's own loss on the reward-filtered samples, same rollouts)
  negguide train-nft --objective positive-only --out runs/positive-only --steps 200
  # held-out two-object accuracy every 100 steps (OUT/heldout.json, OUT/heldout_curve.png); compare two such runs:
  negguide train-nft --heldout-every 100 --steps 1000 --lr 1e-4 --out runs/nft   # lr 3e-4 collapsed after ~800 steps
  python -m experiments.nft_heldout.study --report runs/nft runs/positive-only --out runs/compare
  # several rewards with weights (the reference lowers beta to 0.1 for multi-reward)
  negguide train-nft --reward shapeworld@1.0 --reward clip=./clip@0.1 --beta 0.1 --out runs/mix

A run resumes from OUT/checkpoint when it exists (asking for more --steps continues it). It writes OUT/lora and
OUT/lora_ema (diffusers LoRA folders: pipe.load_lora_weights("OUT/lora"), a PerpNegPipeline too),
OUT/reward_curve.png and, with an accuracy, OUT/accuracy_curve.png.
"""

from __future__ import annotations

import argparse
import os

from negguide.cli.errors import ArgumentParser, UsageError, user_input
from negguide.cli.flags import (
    add_setting_flags,
    add_training_inputs,
    check_image_size,
    check_model,
    is_shapeworld_model,
    load_model,
    ranged,
    read_training_prompts,
)
from negguide.nft.config import NFTConfig
from negguide.rewards.registry import check_prompts_for_reward

NOT_FLAGS = ("prompts", "output_dir", "pipeline_kwargs")  # --prompts / --prompts-file, --out; the rest are flags


def shapeworld_accuracy(images, prompts):
    """ShapeWorld's judged accuracy per image (1: shows everything its prompt states), as a float tensor [B]."""
    import torch

    from negguide.shapeworld.judge import prompt_correct

    return torch.as_tensor(prompt_correct(images, list(prompts)), dtype=torch.float32)


def _flag_fields() -> list:
    return [name for name in NFTConfig.field_specs() if name not in NOT_FLAGS]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="negguide train-nft",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_inputs(parser, "output folder (checkpoint, LoRA, curves)")
    parser.add_argument(
        "--reward",
        action="append",
        help="shapeworld[=FOLDER] | shapeworld-log[=FOLDER] | clip=PATH | "
        "pickscore=PATH, optional @WEIGHT (repeatable; default shapeworld)",
    )
    parser.add_argument(
        "--accuracy",
        choices=("auto", "shapeworld", "none"),
        default="auto",
        help="per-step accuracy to log and plot (auto: shapeworld on the bundled model)",
    )
    parser.add_argument(
        "--heldout-every",
        type=ranged(int, 0, 10**6, "--heldout-every"),
        default=0,
        help="bundled model: judge held-out two-object prompts every N steps (and at 0 and the end) "
        "into OUT/heldout.json and OUT/heldout_curve.png (default 0: off)",
    )
    parser.add_argument(
        "--heldout-prompts",
        type=ranged(int, 1, 200, "--heldout-prompts"),
        default=24,
        help="held-out two-object prompts for --heldout-every, 8 images each (default 24)",
    )
    parser.add_argument(
        "--resume-with-changed-config",
        action="store_true",
        help="resume OUT/checkpoint even when these settings differ from the ones it was saved with (the "
        "change is recorded in it); without it such a resume is refused, naming the settings that differ",
    )
    add_setting_flags(
        parser,
        NFTConfig,
        _flag_fields(),
        overrides={"max_sequence_length": {"shown": "the model's; 0 on the bundled model"}},
    )
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with user_input():
        check_model(args.model)  # before the prompts: a ShapeWorld model folder changes their default
    shapeworld = is_shapeworld_model(args.model)
    if args.heldout_every and not shapeworld:
        raise UsageError(
            "--heldout-every judges ShapeWorld prompts: it needs a ShapeWorld model (the bundled one, "
            "or a folder with shapeworld_training.json such as assets/shapeworld/sd)"
        )
    prompts = read_training_prompts(args)
    sequence = args.max_sequence_length if args.max_sequence_length is not None else (0 if args.model is None else None)
    from negguide.core.training_io import check_writable, first_last_means
    from negguide.nft.trainer import NFTTrainer, TrainingDiverged
    from negguide.rewards.registry import build_reward
    from negguide.shapeworld.bench import load_bench_pipeline
    from negguide.shapeworld.heldout import HeldoutMonitor

    with user_input():  # everything the flags name is checked before any training step
        config = NFTConfig(
            prompts=prompts,
            output_dir=args.out,
            **{**{name: getattr(args, name) for name in _flag_fields()}, "max_sequence_length": sequence},
        )
        check_writable(args.out)  # before loading anything
        reward = build_reward(args.reward)
        use_accuracy = args.accuracy == "shapeworld" or (args.accuracy == "auto" and shapeworld)
        accuracy = shapeworld_accuracy if use_accuracy else None
        check_prompts_for_reward(reward, prompts)
        if accuracy is not None:
            check_prompts_for_reward(accuracy, prompts, "the ShapeWorld accuracy (--accuracy)")
        if args.model is None:
            pipe = load_bench_pipeline()
        else:
            from diffusers import DiffusionPipeline

            pipe = load_model(args.model, DiffusionPipeline.from_pretrained)
        check_image_size(pipe, args.height, args.width)
        trainer = NFTTrainer(
            pipe, reward, config, accuracy=accuracy, allow_config_change=args.resume_with_changed_config
        )
        monitor = None
        if args.heldout_every:
            monitor = HeldoutMonitor(
                args.out,
                args.heldout_every,
                n_prompts=args.heldout_prompts,
                label=args.objective,
                log=lambda line: print(line, flush=True),
            )
    try:
        history = trainer.train(callback=monitor)
    except TrainingDiverged as error:
        raise SystemExit(f"negguide train-nft: {error}") from None
    if trainer.accelerator.is_main_process and history:
        first, last, n = first_last_means(history, "reward")
        extra = ""
        if all("accuracy" in h for h in history[:n] + history[-n:]):
            extra = ", accuracy {:.3f} -> {:.3f}".format(*first_last_means(history, "accuracy")[:2])
        print(
            f"wrote {os.path.join(args.out, 'lora')} and {os.path.join(args.out, 'reward_curve.png')} "
            f"(rollout reward, mean of the first / last {n} steps: {first:.3f} -> {last:.3f}{extra}; "
            f"{trainer.step} steps)"
        )
        if monitor is not None and monitor.curve:
            print(
                f"held-out two-object accuracy: {monitor.curve[0][1]:.3f} (step {monitor.curve[0][0]}) -> "
                f"{monitor.curve[-1][1]:.3f} (step {monitor.curve[-1][0]}), best {max(a for _, a in monitor.curve):.3f};"
                f" {os.path.join(args.out, 'heldout_curve.png')}"
            )
