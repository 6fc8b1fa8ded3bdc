"""NegativeEmbedding: a learned unconditional branch, saved as safetensors with metadata, usable in any pipeline.

ReNeg (Li et al., arXiv 2412.19637) learns the whole negative *encoder output* that classifier-free guidance uses as
its unconditional branch. Per family that is:

- SD1.x/2.x: ``prompt_embeds`` [1, 77, D];
- SDXL: ``prompt_embeds`` [1, 77, D1 + D2] (both encoders, concatenated as diffusers does) + ``pooled_prompt_embeds``;
- SD3: ``prompt_embeds`` [1, 77 + T5 tokens, 4096] (the joint sequence) + ``pooled_prompt_embeds``;
- Flux: ``prompt_embeds`` [1, T5 tokens, 4096] + ``pooled_prompt_embeds`` (used where true CFG is on).

    emb = NegativeEmbedding.load("assets/shapeworld/reneg.safetensors", pipe)   # checked against the model
    images = pipe("a red circle and a blue square", **emb.negative_kwargs()).images
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

FORMAT = "negguide.negative-embedding/1"
FAMILY_TENSORS = {
    "sd": ("prompt_embeds",),
    "sdxl": ("prompt_embeds", "pooled_prompt_embeds"),
    "sd3": ("prompt_embeds", "pooled_prompt_embeds"),
    "flux": ("prompt_embeds", "pooled_prompt_embeds"),
}
# the pipeline argument that carries each tensor as the unconditional branch
NEGATIVE_ARGUMENT = {"prompt_embeds": "negative_prompt_embeds", "pooled_prompt_embeds": "negative_pooled_prompt_embeds"}


@dataclass
class NegativeEmbedding:
    """The tensors of one family's unconditional branch (one row each) and how they were made."""

    family: str
    tensors: dict
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or self.family not in FAMILY_TENSORS:
            raise ValueError(f"family = {self.family!r} is unknown; choose one of {sorted(FAMILY_TENSORS)}")
        want = FAMILY_TENSORS[self.family]
        if not isinstance(self.tensors, dict) or sorted(self.tensors) != sorted(want):
            got = sorted(self.tensors) if isinstance(self.tensors, dict) else type(self.tensors).__name__
            raise ValueError(f"a {self.family} negative embedding holds {list(want)}, got {got}")
        for name, tensor in self.tensors.items():
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(tensor).__name__}")
            expected_dims = 3 if name == "prompt_embeds" else 2
            if tensor.ndim != expected_dims or tensor.shape[0] != 1:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}; expected one row: "
                    f"{'[1, tokens, dim]' if expected_dims == 3 else '[1, dim]'}"
                )
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{name} holds NaN or infinite values; re-create or re-train the embedding")
        if self.metadata is not None and not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict of strings, got {type(self.metadata).__name__}")
        self.metadata = {str(k): str(v) for k, v in (self.metadata or {}).items()}

    # ------------------------------------------------------------------ shapes and compatibility
    @property
    def shapes(self) -> dict:
        return {name: list(t.shape) for name, t in self.tensors.items()}

    def check_compatible(self, pipe) -> None:
        """ValueError unless ``pipe`` is of this family and encodes text to these shapes."""
        from negguide.core.families import detect_family

        if not hasattr(pipe, "components"):
            raise TypeError(f"pipe must be a diffusers pipeline, got {type(pipe).__name__}")
        family = getattr(pipe, "family", None) or detect_family(pipe.components)
        if family != self.family:
            raise ValueError(f"this negative embedding is for a {self.family} model but the pipeline is {family}")
        reference = null_embedding(pipe, self.family, max_sequence_length=self.tensors["prompt_embeds"].shape[1])
        for name, tensor in self.tensors.items():
            if list(tensor.shape) != list(reference.tensors[name].shape):
                raise ValueError(
                    f"{name} has shape {list(tensor.shape)} but this model's text encoders give "
                    f"{list(reference.tensors[name].shape)}: the embedding was trained for another model "
                    f"(base model: {self.metadata.get('base_model', 'unknown')})"
                )

    # ------------------------------------------------------------------ use
    def negative_kwargs(self, device=None, dtype=None) -> dict:
        """``negative_prompt_embeds`` (and pooled) for a pipeline call; PerpNegPipeline shares one row per batch,
        a stock diffusers pipeline needs ``batch_rows`` copies: use ``repeat``."""
        return {NEGATIVE_ARGUMENT[n]: t.to(device=device, dtype=dtype) for n, t in self.tensors.items()}

    def repeat(self, rows: int) -> NegativeEmbedding:
        """The same embedding with ``rows`` identical rows (for stock pipelines with several prompts)."""
        tensors = {n: t.expand(rows, *t.shape[1:]).contiguous() for n, t in self.tensors.items()}
        out = NegativeEmbedding.__new__(NegativeEmbedding)
        out.family, out.tensors, out.metadata = self.family, tensors, dict(self.metadata)
        return out

    # ------------------------------------------------------------------ I/O
    def save(self, path: str) -> str:
        """Write safetensors with metadata (format, family, shapes, and how it was made)."""
        from safetensors.torch import save_file

        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        meta = {**self.metadata, "format": FORMAT, "family": self.family, "shapes": json.dumps(self.shapes)}
        save_file({n: t.detach().float().cpu().contiguous() for n, t in self.tensors.items()}, path, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str, pipe=None) -> NegativeEmbedding:
        """Read a file written by :meth:`save`; with ``pipe``, also check it fits that model. Any file that is not
        such an embedding (missing, a folder, damaged or truncated, another format, metadata or tensors missing) is
        a ValueError naming the file and what is wrong."""
        from safetensors import safe_open

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be the path of a .safetensors file, got {type(path).__name__}")
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(
                f"negative embedding {path!r} is a folder: give the .safetensors file (a training run writes "
                "OUT/negative_embedding.safetensors)"
            )
        if not os.path.isfile(path):
            raise ValueError(f"negative embedding file {path!r} does not exist")
        try:
            with safe_open(path, framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as error:  # safetensors raises its own error types for a damaged or foreign file
            detail = " ".join(str(error).split())[:200] or type(error).__name__
            raise ValueError(
                f"{path!r} is not a safetensors file, or a damaged or truncated one ({detail}); convert "
                "published .bin files with NegativeEmbedding.from_bin"
            ) from None
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{path!r} is not a negguide negative embedding (format {meta.get('format')!r}); "
                f"convert published .bin files with NegativeEmbedding.from_bin"
            )
        family = meta.pop("family", None)
        if family is None:
            raise ValueError(
                f"{path!r} has no 'family' in its metadata (one of {sorted(FAMILY_TENSORS)}); re-save it with "
                "NegativeEmbedding(family, tensors).save(path)"
            )
        meta.pop("format")
        meta.pop("shapes", None)
        try:
            embedding = cls(family, tensors, meta)
        except (ValueError, TypeError) as error:  # unknown family, missing or extra tensors, bad shapes or values
            raise ValueError(f"negative embedding {path!r}: {error}") from None
        if pipe is not None:
            try:
                embedding.check_compatible(pipe)
            except ValueError as error:  # another family or other shapes: name the file too
                raise ValueError(f"negative embedding {path!r}: {error}") from None
        return embedding

    @classmethod
    def from_bin(cls, path: str, family: str, metadata: dict | None = None) -> NegativeEmbedding:
        """Convert a published ``.bin`` (a pickled tensor or dict of tensors) read as plain tensors only
        (``weights_only=True``: no code in the file runs). A bare tensor is the ``prompt_embeds``."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # an unpickling error: the file holds objects, not only tensors
            raise ValueError(
                f"{path!r} is not a plain tensor file ({type(error).__name__}: {error}); "
                "negguide never unpickles objects"
            ) from None
        if isinstance(data, torch.Tensor):
            data = {"prompt_embeds": data}
        if not isinstance(data, dict):
            raise ValueError(f"{path!r} holds a {type(data).__name__}; expected a tensor or a dict of tensors")
        tensors = {k: (v[None] if k == "prompt_embeds" and v.ndim == 2 else v).float() for k, v in data.items()}
        return cls(family, tensors, {"converted_from": os.path.basename(path), **(metadata or {})})


def null_embedding(
    pipe, family: str | None = None, text: str = "", max_sequence_length: int | None = None
) -> NegativeEmbedding:
    """The embedding of ``text`` (default the empty prompt: the null-text initialisation of ReNeg)."""
    from negguide.core.families import detect_family, get_adapter

    family = family or getattr(pipe, "family", None) or detect_family(pipe.components)
    adapter = get_adapter(family)
    inner = pipe.family_pipeline() if hasattr(pipe, "family_pipeline") else pipe
    options = (
        {}
        if max_sequence_length is None or family == "sd" or family == "sdxl"
        else {"max_sequence_length": _t5_tokens(inner, family, max_sequence_length)}
    )
    with torch.no_grad():
        conditioning = adapter.encode(inner, [text], 1, inner._execution_device, options)
    tensors = {}
    for name, key in tensor_keys(family).items():
        tensors[name] = conditioning[key].detach().float().cpu()
    return NegativeEmbedding(family, tensors, {"init_text": text})


def _t5_tokens(pipe, family: str, sequence_tokens: int) -> int:
    """The ``max_sequence_length`` that gives a joint sequence of ``sequence_tokens`` tokens."""
    if family == "sd3":
        clip_tokens = pipe.tokenizer_max_length if hasattr(pipe, "tokenizer_max_length") else 77
        return max(sequence_tokens - clip_tokens, 0)
    return sequence_tokens


def tensor_keys(family: str) -> dict:
    """Embedding tensor name -> the conditioning key of the family's adapter (see core.families)."""
    pooled = {"sdxl": "added_cond_kwargs.text_embeds", "sd3": "pooled_projections", "flux": "pooled_projections"}
    keys = {"prompt_embeds": "encoder_hidden_states"}
    if family in pooled:
        keys["pooled_prompt_embeds"] = pooled[family]
    return keys
