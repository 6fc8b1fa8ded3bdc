"""The DiffusionNFT trainer's checkpoint (written and read by negguide.core.checkpoint): what it holds, and which
settings a resumed run may change.

    OUT/checkpoint/  current.safetensors, old.safetensors (the adapters, peft keys, float32),
                     eval_ema.safetensors (with eval_ema), optimizer.*, rng.*, state.json (step, config, history,
                     family), manifest.json
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields

from negguide.core.checkpoint import CheckpointError, fingerprint, load_checkpoint, save_checkpoint
from negguide.nft.policies import CURRENT, OLD

#: the settings a resumed run may change: the run's length, the checkpoint interval, where it writes, and the
#: micro-batches per step (the same effective batch: the same run up to float rounding)
RESUME_MAY_CHANGE = ("steps", "checkpoint_every", "output_dir", "gradient_accumulation_steps")
OVERRIDE = "allow_config_change=True (negguide train-nft: --resume-with-changed-config)"


def run_config(config) -> dict:
    """The settings a checkpoint records and a resumed run must match (the prompts as a count and fingerprint)."""
    settings = asdict(config)
    settings["prompts"] = f"{len(config.prompts)} prompts, {fingerprint(list(config.prompts))}"
    return settings


def save(trainer, folder: str) -> None:
    """Write ``trainer``'s checkpoint to ``folder`` (call on the main process only)."""
    tensors = {CURRENT: trainer.policies.state_dict(CURRENT), OLD: trainer.policies.state_dict(OLD)}
    if trainer.ema is not None:
        tensors["eval_ema"] = trainer.ema
    meta = {"history": trainer.history, "family": trainer.family}
    save_checkpoint(
        folder, trainer.step, run_config(trainer.config), tensors, trainer.optimizer, meta, trainer.config_log
    )


def load(trainer, folder: str, allow_config_change: bool = False) -> bool:
    """Resume ``trainer`` from ``folder`` (or the ``.old`` a killed save left); False when there is no checkpoint.
    A damaged checkpoint, or one saved with other settings (outside ``RESUME_MAY_CHANGE``, unless
    ``allow_config_change``), raises a CheckpointError (a ValueError) naming what is wrong."""
    defaults = {f.name: f.default for f in fields(trainer.config) if f.default is not MISSING}
    config = run_config(trainer.config)
    ckpt = load_checkpoint(folder, config, RESUME_MAY_CHANGE, allow_config_change, OVERRIDE, defaults)
    if ckpt is None:
        return False
    if ckpt.meta.get("family") != trainer.family:
        raise CheckpointError(
            f"the checkpoint in {ckpt.path!r} trained a {ckpt.meta.get('family')} model, this is {trainer.family}"
        )
    trainer.policies.load_state_dict(CURRENT, ckpt.group(CURRENT))
    trainer.policies.load_state_dict(OLD, ckpt.group(OLD))
    if trainer.ema is not None and "eval_ema" in ckpt.tensors:
        trainer.ema = ckpt.group("eval_ema")
    ckpt.load_optimizer(trainer.optimizer)
    ckpt.restore_rng()
    trainer.step, trainer.history, trainer.config_log = ckpt.step, ckpt.meta.get("history", []), ckpt.config_log
    return True
