"""CLIP-score and PickScore rewards: ``(images [B,3,H,W] in [0,1], prompts list[str]) -> Tensor[B]``.

``CLIPScoreReward`` wraps a transformers ``CLIPModel`` and its tokenizer. Images are preprocessed in torch, so
the score is differentiable w.r.t. the pixels (``preprocess_images``): resize so the shortest edge is the
processor's ``shortest_edge`` (default the model's ``image_size``; bicubic, antialiased), center-crop to
``image_size`` x ``image_size``, normalise with the processor's mean/std (OpenAI CLIP's when the folder has no
``preprocessor_config.json``). The score is

    score = scale * cos(image_embedding, text_embedding)          (clamp=False, the default)
    score = scale * max(cos(image_embedding, text_embedding), 0)  (clamp=True)

with ``scale`` a number (default 1) or ``"logit_scale"`` (the model's own ``logit_scale.exp()``, about 100 for
trained CLIPs). The usual CLIPScore (torchmetrics) is ``scale=100, clamp=True``; Hessel et al.'s paper uses
``scale=2.5, clamp=True``. Note ``clamp=True`` gives zero gradient to images whose cosine is negative.

``PickScoreReward`` is the same machinery with ``scale="logit_scale"``: PickScore (Kirstain et al. 2023) is a
CLIP-H/14 fine-tuned on human preferences, scored as ``logit_scale.exp() * cos``::

    reward = PickScoreReward.from_pretrained()  # = ("yuvalkirstain/PickScore_v1",
                                                #    processor="laion/CLIP-ViT-H-14-laion2B-s32B-b79K")

Text embeddings are computed without gradient and cached per prompt string (``clear_cache()``; moving the
module with ``.to()`` clears it). The model is frozen (``requires_grad=False``) and stays in eval mode.

``from_pretrained`` loads from a local folder (``save_pretrained`` of a ``CLIPModel`` plus its tokenizer, and
optionally a ``CLIPImageProcessor``), or from a hub id where the Hugging Face hub is reachable (not with
``HF_HUB_OFFLINE=1``). transformers is imported only when a reward is built.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from negguide.rewards.inputs import check_images_and_prompts

#: OpenAI CLIP's normalisation (used when no CLIPImageProcessor config is found)
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: PickScore's model and the repository holding its tokenizer and image processor
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


# ----------------------------------------------------------------------------------------------- pure helpers


def preprocess_images(images: torch.Tensor, image_size: int, mean, std, resize_size: int | None = None) -> torch.Tensor:
    """CLIPImageProcessor in torch, differentiably: ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, S, S]`` normalised.

    Resize so the shortest edge is ``resize_size`` (default ``image_size``; bicubic, antialiased; the long edge
    is ``int(resize_size * long / short)`` like transformers), center-crop to ``image_size``, then
    ``(x - mean) / std`` per channel.
    """
    resize_size = image_size if resize_size is None else resize_size
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    if short != resize_size:
        new_long = int(resize_size * long / short)
        size = (resize_size, new_long) if h <= w else (new_long, resize_size)
        images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
    h, w = images.shape[-2:]
    if (h, w) != (image_size, image_size):
        top, left = (h - image_size) // 2, (w - image_size) // 2
        images = images[..., top : top + image_size, left : left + image_size]  # [B, 3, S, S]
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def _channel_stats(value, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise TypeError(f"{what} must be 3 numbers (one per RGB channel), got {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be 3 finite numbers (one per RGB channel), got {value!r}")
    if what == "std" and min(out) <= 0:
        raise ValueError(f"std must be positive, got {value!r}")
    return out


def _size_field(size, key: str):
    """``size[key]`` for the dicts (transformers 4) and SizeDicts (transformers 5) of image processor configs."""
    if size is None or isinstance(size, int):
        return size
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def load_image_settings(path: str | os.PathLike, **hub_kwargs) -> dict:
    """``{"mean", "std", "resize_size"}`` from the ``preprocessor_config.json`` of ``path`` (folder or hub id);
    OpenAI CLIP's mean/std and ``resize_size=None`` (the model's image size) when there is none."""
    from transformers.image_processing_base import ImageProcessingMixin

    path = os.fspath(path)
    try:
        cfg, _ = ImageProcessingMixin.get_image_processor_dict(path, **hub_kwargs)
    except (OSError, ValueError) as e:
        if not os.path.isdir(path):  # a hub id whose config could not be fetched: say so, then use the defaults
            warnings.warn(f"no image processor config for {path!r} ({e}); using OpenAI CLIP's mean/std", stacklevel=2)
        cfg = {}
    size = cfg.get("size")
    resize = _size_field(size, "shortest_edge") if not isinstance(size, int) else size
    return {
        "mean": tuple(cfg.get("image_mean") or OPENAI_CLIP_MEAN),
        "std": tuple(cfg.get("image_std") or OPENAI_CLIP_STD),
        "resize_size": int(resize) if resize else None,
    }


def _dtype_kwargs(torch_dtype) -> dict:
    if torch_dtype is None:
        return {}
    if isinstance(torch_dtype, str) and torch_dtype != "auto":
        resolved = getattr(torch, torch_dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"torch_dtype={torch_dtype!r} is not a torch dtype; use e.g. torch.float16 or 'float16'")
        torch_dtype = resolved
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return {key: torch_dtype}


# ----------------------------------------------------------------------------------------------- the rewards


class CLIPScoreReward(nn.Module):
    """Reward callable ``(images [B,3,H,W] in [0,1], prompts list[str] | str) -> Tensor[B]`` (float32):
    ``scale * cos(image, text)`` (``clamp=True``: ``scale * max(cos, 0)``) of a CLIP model; differentiable
    w.r.t. the images. See the module docstring.

    Args:
        model: a transformers ``CLIPModel`` (anything with ``text_model``, ``vision_model``,
            ``text_projection``, ``visual_projection``, ``logit_scale``); frozen and put in eval mode.
        tokenizer: its tokenizer (a ``CLIPTokenizer``, or any callable HF tokenizer).
        mean, std: per-channel normalisation (default OpenAI CLIP's).
        scale: a finite number (default 1.0) or ``"logit_scale"`` for the model's ``logit_scale.exp()``.
        clamp: clamp the cosine at 0 before scaling (the CLIPScore convention).
        resize_size: shortest edge before the center crop (default the model's ``image_size``; must be >= it).
        max_length: token length of prompts (default ``min(tokenizer.model_max_length,
            max_position_embeddings)``); longer prompts are truncated.
        text_cache_size: how many prompt embeddings to keep (least recently used dropped; 0 disables).
    """

    default_scale: float | str = 1.0

    def __init__(
        self,
        model,
        tokenizer,
        mean=None,
        std=None,
        *,
        scale: float | str | None = None,
        clamp: bool = False,
        resize_size: int | None = None,
        max_length: int | None = None,
        text_cache_size: int = 4096,
    ):
        super().__init__()
        missing = [
            a
            for a in ("text_model", "vision_model", "text_projection", "visual_projection", "logit_scale")
            if not hasattr(model, a)
        ]
        if not isinstance(model, nn.Module) or missing:
            raise TypeError(
                f"model must be a transformers CLIPModel, got {type(model).__name__} (missing {missing}); load one"
                " with CLIPModel.from_pretrained(...) or use CLIPScoreReward.from_pretrained(...)"
            )
        if not callable(tokenizer):
            raise TypeError(
                f"tokenizer must be a callable HF tokenizer (e.g. CLIPTokenizer), got {type(tokenizer).__name__}"
            )
        scale = self.default_scale if scale is None else scale
        if isinstance(scale, str):
            if scale != "logit_scale":
                raise ValueError(f"scale={scale!r}: use a number or the string 'logit_scale'")
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise TypeError(f"scale must be a finite number or 'logit_scale', got {scale!r}")
        else:
            scale = float(scale)
        if not isinstance(clamp, bool):
            raise TypeError(f"clamp must be True or False, got {clamp!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.mean = _channel_stats(OPENAI_CLIP_MEAN if mean is None else mean, "mean")
        self.std = _channel_stats(OPENAI_CLIP_STD if std is None else std, "std")
        self.scale = scale
        self.clamp = clamp
        vision_cfg = model.config.vision_config
        text_cfg = model.config.text_config
        self.image_size = int(vision_cfg.image_size)
        self.resize_size = self.image_size if resize_size is None else int(resize_size)
        if self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size={resize_size} is smaller than the model's image_size={self.image_size}; the center"
                " crop needs resize_size >= image_size (or pass resize_size=None)"
            )
        if max_length is None:
            tokenizer_max = int(getattr(tokenizer, "model_max_length", 77) or 77)
            max_length = min(tokenizer_max, int(text_cfg.max_position_embeddings))
        if not isinstance(max_length, int) or not 2 <= max_length <= text_cfg.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length!r} must be an int in [2, {text_cfg.max_position_embeddings}]"
                " (the text model's max_position_embeddings)"
            )
        self.max_length = max_length
        if not isinstance(text_cache_size, int) or text_cache_size < 0:
            raise ValueError(f"text_cache_size={text_cache_size!r} must be an int >= 0")
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.model.requires_grad_(False)
        self.eval()

    # -- loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        processor: str | os.PathLike | None = None,
        torch_dtype=None,
        device=None,
        **options,
    ) -> CLIPScoreReward:
        """Load a ``CLIPModel`` from ``pretrained_model_name_or_path`` and the tokenizer (``AutoTokenizer``) and
        image settings (``preprocessor_config.json``: mean, std, shortest edge) from ``processor`` (default the
        same path). Paths are local folders, or hub ids where the hub is reachable. ``torch_dtype`` (e.g.
        ``torch.float16``) and ``device`` place the model; ``options`` go to the constructor (``scale``,
        ``clamp``, ``max_length``, ...; an explicit ``mean``/``std``/``resize_size`` wins over the processor's).
        """
        from transformers import AutoTokenizer, CLIPModel

        path = os.fspath(pretrained_model_name_or_path)
        proc_path = path if processor is None else os.fspath(processor)
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        hint = (
            " (a local folder written by CLIPModel.save_pretrained, or a hub id when the Hugging Face hub is"
            " reachable"
            + ("; HF_HUB_OFFLINE is set, so only local folders and cached ids work" if offline else "")
            + ")"
        )
        try:
            model = CLIPModel.from_pretrained(path, **_dtype_kwargs(torch_dtype))
        except (OSError, ValueError) as e:  # ValueError: huggingface_hub rejects the string as a repo id
            raise OSError(f"could not load a CLIPModel from {path!r}{hint}: {e}") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(proc_path)
        except (OSError, ValueError) as e:
            raise OSError(
                f"could not load a tokenizer from {proc_path!r}{hint}; pass processor=<folder or hub id holding"
                f" the tokenizer>: {e}"
            ) from e
        settings = load_image_settings(proc_path)
        for key in ("mean", "std", "resize_size"):
            options.setdefault(key, settings[key])
        if device is not None:
            model = model.to(device)
        return cls(model, tokenizer, **options)

    # -- embeddings

    def _apply(self, fn, *args, **kwargs):  # .to()/.half()/.cuda(): cached text embeddings would be stale
        self._text_cache = OrderedDict()
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        """The reward stays in eval mode (its model is frozen); ``train()`` is a no-op."""
        return super().train(False)

    def clear_cache(self) -> None:
        """Forget the cached text embeddings (call after changing the model's weights in place)."""
        self._text_cache = OrderedDict()

    def _param(self) -> torch.Tensor:
        return self.model.visual_projection.weight

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, D]`` (float32) of images ``[B, 3, H, W]`` in [0, 1]; keeps grad."""
        param = self._param()
        images = images.to(param.device).float()
        pixels = preprocess_images(images, self.image_size, self.mean, self.std, self.resize_size)  # [B, 3, S, S]
        pooled = self.model.vision_model(pixel_values=pixels.to(param.device, param.dtype)).pooler_output  # [B, Hv]
        emb = self.model.visual_projection(pooled).float()  # [B, D]
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        param = self.model.text_projection.weight
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        out = self.model.text_model(
            input_ids=tokens["input_ids"].to(param.device), attention_mask=tokens["attention_mask"].to(param.device)
        )
        emb = self.model.text_projection(out.pooler_output).float()  # [N, D]
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``[B, D]`` (float32, no grad), cached per prompt string."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        fresh = dict(zip(todo, self._encode_text(todo))) if todo else {}
        rows = []
        for p in prompts:
            if p in fresh:
                rows.append(fresh[p])
            else:
                self._text_cache.move_to_end(p)
                rows.append(self._text_cache[p])
        if self.text_cache_size:
            for p, e in fresh.items():
                self._text_cache[p] = e
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return torch.stack(rows)  # [B, D]

    # -- scores

    def score_scale(self) -> torch.Tensor | float:
        """The factor applied to the cosine: ``scale``, or ``logit_scale.exp()`` for ``scale='logit_scale'``."""
        if self.scale == "logit_scale":
            return self.model.logit_scale.detach().float().exp()
        return self.scale

    def similarity(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """Cosine similarity ``[B]`` (float32) of each image and its prompt (validated like ``forward``)."""
        prompts = check_images_and_prompts(images, prompts)
        img = self.image_embeddings(images)  # [B, D]
        txt = self.text_embeddings(prompts).to(img.device)  # [B, D]
        return (img * txt).sum(-1)  # [B]

    def forward(self, images: torch.Tensor, prompts) -> torch.Tensor:
        cos = self.similarity(images, prompts)
        if self.clamp:
            cos = cos.clamp_min(0.0)
        return cos * self.score_scale()

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale!r}, clamp={self.clamp}, image_size={self.image_size},"
            f" resize_size={self.resize_size}, max_length={self.max_length}"
        )


class PickScoreReward(CLIPScoreReward):
    """PickScore (Kirstain et al. 2023, "Pick-a-Pic"): ``logit_scale.exp() * cos(image, text)`` of a CLIP-H/14
    fine-tuned on human preferences; a ``CLIPScoreReward`` whose ``scale`` defaults to ``"logit_scale"``.

    ``PickScoreReward.from_pretrained()`` loads ``yuvalkirstain/PickScore_v1`` with the tokenizer and image
    processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (needs the hub, or both in the local HF cache); pass a
    local folder (and ``processor=`` a folder with the tokenizer, if the model folder has none) to load offline.
    """

    default_scale = "logit_scale"

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike = PICKSCORE_MODEL,
        processor: str | os.PathLike | None = None,
        torch_dtype=None,
        device=None,
        **options,
    ) -> PickScoreReward:
        """Like ``CLIPScoreReward.from_pretrained``; for the default ``yuvalkirstain/PickScore_v1`` the processor
        defaults to ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (that repository holds PickScore's tokenizer)."""
        if processor is None and os.fspath(pretrained_model_name_or_path) == PICKSCORE_MODEL:
            processor = PICKSCORE_PROCESSOR
        return super().from_pretrained(pretrained_model_name_or_path, processor, torch_dtype, device, **options)
