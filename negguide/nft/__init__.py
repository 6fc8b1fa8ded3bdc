"""DiffusionNFT (Zheng et al., arXiv 2509.16117): pure math of negative-aware online RL fine-tuning.

- advantages: rewards grouped by prompt -> optimality probability r in [0, 1];
- loss: the DiffusionNFT loss in velocity form (flow matching) and in x0 form (epsilon / v prediction);
- ema: the old-policy soft update and the evaluation EMA.

- policies: current / old / reference as peft LoRA adapters of one denoiser, exported as a diffusers LoRA;
- rollout: old-policy samples through the family's diffusers pipeline (any scheduler, CFG-free by default);
- trainer: NFTConfig and NFTTrainer (accelerate, checkpoints, curves); cli: ``negguide train-nft``.

Every name loads on first use, so ``import negguide.nft`` (and ``negguide.nft.config``, which the CLI's help
reads) imports neither torch, diffusers nor peft.
"""

from negguide._lazy import lazy_exports

_MATH = {
    "negguide.nft.advantages": (
        "advantage_to_probability",
        "check_rewards",
        "epoch_reward_std",
        "group_advantages",
        "group_index",
        "group_stats",
        "optimality_probability",
    ),
    "negguide.nft.ema": ("ema_update_", "eval_ema_decay", "old_policy_decay"),
    "negguide.nft.loss": (
        "PREDICTION_TYPES",
        "adaptive_x0_loss",
        "check_loss_inputs",
        "implicit_policies",
        "kl_penalty",
        "native_kl_scale",
        "nft_loss",
        "nft_loss_x0",
        "per_sample_mean",
        "x0_from_flow",
        "x0_from_prediction",
    ),
}
_EXPORTS = {
    "NFTConfig": "negguide.nft.config",
    "NFTTrainer": "negguide.nft.trainer",
    "TrainingDiverged": "negguide.nft.trainer",
    "NFTPolicies": "negguide.nft.policies",
    "Rollout": "negguide.nft.rollout",
    **{name: module for module, names in _MATH.items() for name in names},
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "NFTConfig",
    "NFTPolicies",
    "NFTTrainer",
    "PREDICTION_TYPES",
    "Rollout",
    "TrainingDiverged",
    "adaptive_x0_loss",
    "advantage_to_probability",
    "check_loss_inputs",
    "check_rewards",
    "ema_update_",
    "epoch_reward_std",
    "eval_ema_decay",
    "group_advantages",
    "group_index",
    "group_stats",
    "implicit_policies",
    "kl_penalty",
    "native_kl_scale",
    "nft_loss",
    "nft_loss_x0",
    "old_policy_decay",
    "optimality_probability",
    "per_sample_mean",
    "x0_from_flow",
    "x0_from_prediction",
]
