"""DiffusionNFT's three policies as peft LoRA adapters of ONE denoiser (no second copy of the base weights).

    current    the trained adapter ("current", requires_grad)
    old        a frozen adapter ("old"), the EMA of current, that samples the rollouts
    reference  the base model: every adapter disabled

    policies = NFTPolicies(pipe.unet, rank=32, alpha=64)          # the reference's r 32 / alpha 64
    with policies.use("old"):
        prediction = pipe.unet(...)
    policies.update_old(decay)                                    # old <- d old + (1 - d) current
    policies.export(folder, "sd")                                 # pipe.load_lora_weights(folder) loads it
    policies.state_dict("current"), policies.load_state_dict("old", tensors)    # what a checkpoint holds

Switching policies goes through diffusers' ``set_adapter`` / ``disable_adapters`` (peft's tuner layers) and then
restores which tensors train: the current adapter's, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from negguide.nft.ema import ema_update_

CURRENT, OLD, REFERENCE = "current", "old", "reference"
POLICIES = (CURRENT, OLD, REFERENCE)
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_UNET_FAMILIES = ("sd", "sdxl")


def _key(name: str, adapter: str) -> str | None:
    """``a.to_q.lora_A.current.weight`` -> ``a.to_q.lora_A.weight`` for ``adapter`` (peft's saved key), else None."""
    marker = f".{adapter}."
    if ".lora_" not in name or marker not in name:
        return None
    return name.replace(marker, ".", 1)


class NFTPolicies:
    """The current / old / reference policies of ``denoiser`` (a diffusers UNet or transformer) through peft LoRA.

    ``rank``, ``alpha``: LoRA rank and alpha (scale alpha / rank); ``targets``: module names (suffixes) to adapt;
    ``seed``: the LoRA initialisation (peft's: A random, B zero, so current = old = reference at the start).
    """

    def __init__(
        self, denoiser: torch.nn.Module, rank: int = 32, alpha: float = 64.0, targets=DEFAULT_TARGETS, seed: int = 0
    ):
        if not hasattr(denoiser, "add_adapter") or not hasattr(denoiser, "set_adapter"):
            raise ValueError(
                f"{type(denoiser).__name__} does not take peft adapters; DiffusionNFT needs a diffusers "
                "UNet2DConditionModel, SD3Transformer2DModel or FluxTransformer2DModel"
            )
        existing = set(getattr(denoiser, "peft_config", {}) or {})
        if existing & {CURRENT, OLD}:
            raise ValueError(
                f"the denoiser already has adapters {sorted(existing)}; build the trainer on a fresh "
                "pipeline (or delete_adapters first)"
            )
        if existing:
            raise ValueError(
                f"the denoiser already carries LoRA adapters {sorted(existing)}: fuse them "
                "(pipe.fuse_lora(); pipe.unload_lora_weights()) so the reference policy is well defined"
            )
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise ValueError("LoRA targets are empty; name the attention projections, e.g. to_q,to_k,to_v,to_out.0")
        from peft import LoraConfig

        self.denoiser = denoiser
        self.rank, self.alpha, self.targets = int(rank), float(alpha), tuple(targets)
        denoiser.requires_grad_(False)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*peft_config.*")  # two adapters on purpose
            torch.manual_seed(seed)
            for name in (CURRENT, OLD):
                config = LoraConfig(
                    r=self.rank,
                    lora_alpha=self.alpha,
                    target_modules=list(self.targets),
                    lora_dropout=0.0,
                    init_lora_weights=True,
                )
                try:
                    denoiser.add_adapter(config, adapter_name=name)
                except ValueError as error:
                    raise ValueError(
                        f"LoRA targets {list(self.targets)} match no module of {type(denoiser).__name__} ({error})"
                    ) from None
        self.tensors = {a: {} for a in (CURRENT, OLD)}  # adapter -> {peft key: parameter}
        for name, param in denoiser.named_parameters():
            for adapter in (CURRENT, OLD):
                key = _key(name, adapter)
                if key is not None:
                    self.tensors[adapter][key] = param
        for adapter in (CURRENT, OLD):
            for param in self.tensors[adapter].values():
                param.data = param.data.float()  # train LoRA in float32 whatever the base dtype
        self.copy_old_from_current()
        self._activate(CURRENT)

    # ------------------------------------------------------------------ policies
    def _activate(self, policy: str) -> None:
        if policy == REFERENCE:
            self.denoiser.disable_adapters()
        else:
            self.denoiser.enable_adapters()
            self.denoiser.set_adapter(policy)
        self._set_trainable()

    def _set_trainable(self) -> None:
        """peft toggles requires_grad when switching: only the current adapter trains, always."""
        for adapter, tensors in self.tensors.items():
            for param in tensors.values():
                param.requires_grad_(adapter == CURRENT)

    @contextlib.contextmanager
    def use(self, policy: str):
        """Run the denoiser as ``policy`` ("current", "old" or "reference") inside the block; back to current after."""
        if policy not in POLICIES:
            raise ValueError(f"policy = {policy!r} is not one of {POLICIES}")
        self._activate(policy)
        try:
            yield self.denoiser
        finally:
            self._activate(CURRENT)

    def parameters(self) -> list:
        """The trainable tensors (the current adapter), in a fixed order."""
        return [self.tensors[CURRENT][k] for k in sorted(self.tensors[CURRENT])]

    # ------------------------------------------------------------------ old policy
    @torch.no_grad()
    def copy_old_from_current(self) -> None:
        ema_update_(self.tensors[OLD], self.tensors[CURRENT], 0.0)

    def update_old(self, decay: float) -> None:
        """theta_old <- decay theta_old + (1 - decay) theta (DiffusionNFT's soft old-policy update)."""
        ema_update_(self.tensors[OLD], self.tensors[CURRENT], decay)

    # ------------------------------------------------------------------ state
    def state_dict(self, adapter: str = CURRENT) -> dict:
        """{peft key: float32 CPU copy} of ``adapter`` ("current" or "old")."""
        return {k: v.detach().float().cpu().clone().contiguous() for k, v in self.tensors[adapter].items()}

    @torch.no_grad()
    def load_state_dict(self, adapter: str, tensors: dict) -> None:
        mine = self.tensors[adapter]
        missing, extra = sorted(set(mine) - set(tensors)), sorted(set(tensors) - set(mine))
        if missing or extra:
            raise ValueError(
                f"the saved {adapter} adapter does not fit this LoRA (rank, targets): missing "
                f"{missing[:3]}, unexpected {extra[:3]}; use the settings of the run that saved it"
            )
        for key, param in mine.items():
            if tensors[key].shape != param.shape:
                raise ValueError(
                    f"the saved {adapter} tensor {key} has shape {tuple(tensors[key].shape)}, this LoRA "
                    f"{tuple(param.shape)}: the LoRA rank differs from the run that saved it"
                )
            param.copy_(tensors[key])

    def lora_config(self) -> dict:
        """The peft LoraConfig of the adapters as a dict (saved with the LoRA so alpha / rank survive loading)."""
        return self.denoiser.peft_config[CURRENT].to_dict()

    def export(self, folder: str, family: str, tensors: dict | None = None) -> str:
        """Save ``tensors`` (default: the current adapter) as a diffusers LoRA that ``pipe.load_lora_weights(folder)``
        loads on the family's diffusers pipeline; returns the weights file's path."""
        import diffusers
        from diffusers.utils import convert_state_dict_to_diffusers

        from negguide.core.families import get_adapter

        state = (
            self.state_dict(CURRENT) if tensors is None else {k: v.detach().float().cpu() for k, v in tensors.items()}
        )
        state = {k: v.to(next(iter(self.tensors[CURRENT].values())).dtype) for k, v in state.items()}
        cls = getattr(diffusers, get_adapter(family).pipeline_class)
        metadata = self.lora_config()
        os.makedirs(folder, exist_ok=True)
        if family in _UNET_FAMILIES:
            cls.save_lora_weights(
                folder,
                unet_lora_layers=convert_state_dict_to_diffusers(state),
                unet_lora_adapter_metadata=metadata,
                safe_serialization=True,
            )
        else:
            cls.save_lora_weights(
                folder,
                transformer_lora_layers=state,
                transformer_lora_adapter_metadata=metadata,
                safe_serialization=True,
            )
        return os.path.join(folder, "pytorch_lora_weights.safetensors")
