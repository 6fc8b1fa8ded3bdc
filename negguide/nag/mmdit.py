"""NAG's negative pass on an MMDiT block (SD3 joint, Flux joint and single) doing only what the method needs.

The reference code (github.com/ChenDarYen/Normalized-Attention-Guidance, ``src/attention_joint_nag.py`` and
``src/attention_flux_nag.py`` with ``src/normalization.py``) gives the negative rows of its own only in the text
stream of joint blocks: the image tokens' norm (``temb`` cut to the image rows), Q/K/V projections (tiled to the
negative rows), output projection and feed-forward run once. In Flux single blocks it runs the negative rows whole,
image tokens included, since they are modulated by the negative's own pooled text; with the call's ``temb`` for the
negative, as here (and in the reference's SD3 code), those image tokens stay equal to the positive's in every
block, so that work would only repeat the positive's. Per active negative this module runs, inside the positive's
own call of the block:

* the negative's text stream through the block's context side: its adaptive norm (the call's ``temb``), its Q/K/V
  projections (and Flux's rotary embedding at the text positions), its output projection and feed-forward;
* one attention over the negative's text tokens and the image tokens, whose keys and values are read off the
  positive's projections (forward hooks on ``attn.to_q/to_k/to_v``, or ``to_qkv`` when fused; normalized and rotated
  as the processor does). Its queries are the image tokens' where the block is guided (``Z-``) and the negative's
  text tokens where its stream goes on to a later block.

This is the same computation as running the whole block again with the negative's text stream and discarding the
image output (what :mod:`negguide.nag.hooks` does for any other block or processor), minus the work whose result
would be discarded. It applies to diffusers' own block classes with their own processors and no
``joint_attention_kwargs``; :func:`fast_kind` says whether a call qualifies.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from negguide.nag.processor import rows_of


@functools.cache
def _known() -> tuple[dict, tuple]:
    """({block class: (kind, clips float16 streams)}, processor classes) of diffusers' MMDiT blocks this module
    reproduces; empty if this diffusers has them elsewhere (then every block runs whole per negative)."""
    try:
        from diffusers.models.attention import JointTransformerBlock
        from diffusers.models.attention_processor import JointAttnProcessor2_0
        from diffusers.models.transformers.transformer_flux import (
            FluxAttnProcessor,
            FluxSingleTransformerBlock,
            FluxTransformerBlock,
        )
    except ImportError:  # pragma: no cover - another diffusers layout
        return {}, ()
    blocks = {
        JointTransformerBlock: ("joint", False),
        FluxTransformerBlock: ("joint", True),
        FluxSingleTransformerBlock: ("single", True),
    }
    return blocks, (JointAttnProcessor2_0, FluxAttnProcessor)


def fast_kind(block: torch.nn.Module, inner, call: dict) -> str | None:
    """'joint' or 'single' when the negative pass of ``block``, whose attention runs the processor ``inner`` (exactly
    one of diffusers' own: a subclass may compute something else), can reuse the positive's image projections in
    the call ``call`` (the block's bound arguments; ``joint_attention_kwargs`` would reach the processor); else
    None."""
    blocks, processors = _known()
    if type(block) not in blocks or type(inner) not in processors or call.get("joint_attention_kwargs"):
        return None
    return blocks[type(block)][0]


def _project(attn, x: torch.Tensor, added: bool, need_q: bool) -> tuple:
    """Q (None if not ``need_q`` and not fused), K, V of ``x`` [g, L, D] through the text (``added``) or the main
    projections, fused or not."""
    if getattr(attn, "fused_projections", False):
        return (attn.to_added_qkv if added else attn.to_qkv)(x).chunk(3, dim=-1)
    q, k, v = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if added else (attn.to_q, attn.to_k, attn.to_v)
    return q(x) if need_q else None, k(x), v(x)


def _heads(attn, x: torch.Tensor, norm=None) -> torch.Tensor:
    """[g, S, H * d] -> [g, S, H, d], then the processor's per-head norm (if any)."""
    x = x.unflatten(-1, (attn.heads, -1))
    return x if norm is None else norm(x)


def _rotate(x: torch.Tensor, rotary, positions: slice) -> torch.Tensor:
    """Flux's rotary embedding at ``positions`` of the joint sequence (text first); x: [g, S, H, d]."""
    if rotary is None:
        return x
    from diffusers.models.embeddings import apply_rotary_emb

    cos, sin = rotary
    return apply_rotary_emb(x, (cos[positions], sin[positions]), sequence_dim=1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention, [g, S, H, d] in, [g, Sq, H * d] out (as the processors flatten it)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2).to(q.dtype)


class BlockPass:
    """The negatives' share of one block call: made by the block's pre-hook, which also starts capturing the
    positive's image projections; :meth:`run` (from the guided processor, or from the block's forward hook) computes
    every active negative's ``Z-`` and advances its text stream in ``state.contexts``."""

    def __init__(self, block, kind: str, state, call: dict, guided: bool, need_stream: bool):
        self.block, self.attn, self.kind, self.state = block, block.attn, kind, state
        self.guided, self.need_stream = guided, need_stream
        self.temb = rows_of(call["temb"], state.rows, state.total)
        self.rotary = call.get("image_rotary_emb")
        self.clip = _known()[0][type(block)][1]  # Flux clips float16 streams after each block
        self.captured: dict = {}
        self.result: dict | None = None
        names = ("to_qkv",) if getattr(self.attn, "fused_projections", False) else ("to_q", "to_k", "to_v")
        if not guided and names[0] == "to_q":
            names = names[1:]  # an unguided block needs the image keys and values only
        self._handles = [getattr(self.attn, n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(module, args, output):
            self.captured.setdefault(name, output)  # the first call is the positive's image (or joint) tokens

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def run(self) -> dict:
        """{negative: Z- [g, N, C]} (empty for an unguided block); computed once, streams advanced once."""
        if self.result is None:
            self.remove()  # the negatives' own projections below must not be captured
            image = self._image()
            step = self._single if self.kind == "single" else self._joint
            self.result = {}
            for i in self.state.active:
                stream = self.state.contexts.get(i)
                if stream is None:  # the stream ended (SD3's last block is context_pre_only)
                    continue
                z_neg, self.state.contexts[i] = step(stream, image)
                if z_neg is not None:
                    self.result[i] = z_neg
            self.captured = {}
        return self.result

    def _image(self) -> tuple:
        """The positive's image-token queries (None for an unguided block), keys and values: [g, N, H, d]."""
        attn, rows, text = self.attn, self.state.rows, self.state.text_tokens
        if "to_qkv" in self.captured:
            q, k, v = self.captured["to_qkv"].chunk(3, dim=-1)
        else:
            q, k, v = (self.captured.get(n) for n in ("to_q", "to_k", "to_v"))
        if k is None or v is None or (self.guided and q is None):
            raise RuntimeError(f"{type(self.block).__name__}: the positive's image projections were not seen")
        start = text if self.kind == "single" else 0  # single blocks project [text; image] together
        positions = slice(text, None)
        cut = lambda x: x[rows, start:]
        k = _rotate(_heads(attn, cut(k), attn.norm_k), self.rotary, positions)
        v = _heads(attn, cut(v))
        if not self.guided:
            return None, k, v
        return _rotate(_heads(attn, cut(q), attn.norm_q), self.rotary, positions), k, v

    def _attention(self, text_qkv: tuple, image: tuple, need_text: bool) -> tuple:
        """(Z- [g, N, C] or None, the text tokens' attention output [g, L, C] or None) over [text; image]: the
        queries are the text tokens' if ``need_text`` and the image tokens' if the block is guided."""
        (tq, tk, tv), (iq, ik, iv) = text_qkv, image
        queries = ([tq] if need_text else []) + ([iq] if self.guided else [])
        out = _attend(torch.cat(queries, dim=1), torch.cat([tk, ik], dim=1), torch.cat([tv, iv], dim=1))
        length = tk.shape[1] if need_text else 0
        return (out[:, length:] if self.guided else None), (out[:, :length] if need_text else None)

    def _text(self, normed: torch.Tensor, added: bool, norms: tuple, need_q: bool) -> tuple:
        """The negative's text tokens' Q (None unless ``need_q``), K, V: [g, L, H, d], as the processor makes them."""
        attn = self.attn
        q, k, v = _project(attn, normed, added, need_q)
        text = slice(0, normed.shape[1])
        q = _rotate(_heads(attn, q, norms[0]), self.rotary, text) if need_q else None
        return q, _rotate(_heads(attn, k, norms[1]), self.rotary, text), _heads(attn, v)

    def _clipped(self, stream: torch.Tensor) -> torch.Tensor:
        return stream.clip(-65504, 65504) if self.clip and stream.dtype == torch.float16 else stream

    def _joint(self, stream: torch.Tensor, image: tuple) -> tuple:
        """SD3 / Flux joint block: (Z-, the stream after the block, None where it ends)."""
        block, attn = self.block, self.attn
        if getattr(block, "context_pre_only", False):  # SD3's last block: the text stream ends here
            normed, gates = block.norm1_context(stream, self.temb), None
        else:
            normed, *gates = block.norm1_context(stream, emb=self.temb)
        need_text = self.need_stream and gates is not None
        text_qkv = self._text(normed, True, (attn.norm_added_q, attn.norm_added_k), need_text)
        z_neg, text = self._attention(text_qkv, image, need_text)
        if text is None:  # the stream ends here, or no later block reads it
            return z_neg, None if gates is None else stream
        gate_msa, shift_mlp, scale_mlp, gate_mlp = gates
        stream = stream + gate_msa.unsqueeze(1) * attn.to_add_out(text)
        normed = block.norm2_context(stream) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        stream = stream + gate_mlp.unsqueeze(1) * block.ff_context(normed)
        return z_neg, self._clipped(stream)

    def _single(self, stream: torch.Tensor, image: tuple) -> tuple:
        """Flux single block (the text tokens share the image tokens' projections): (Z-, the stream after it)."""
        block, attn = self.block, self.attn
        normed, gate = block.norm(stream, emb=self.temb)
        text_qkv = self._text(normed, False, (attn.norm_q, attn.norm_k), self.need_stream)
        z_neg, text = self._attention(text_qkv, image, self.need_stream)
        if text is None:
            return z_neg, stream
        mlp = block.act_mlp(block.proj_mlp(normed))
        stream = stream + gate.unsqueeze(1) * block.proj_out(torch.cat([text, mlp], dim=2))
        return z_neg, self._clipped(stream)
