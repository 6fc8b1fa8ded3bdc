"""Negative token merging, the pure math (Singh et al., arXiv 2412.01339, Sec. 3).

For source tokens ``h`` ([N, D] per image) and reference tokens ``r`` ([M, D]):

    sim[i, j] = cos(h_i, r_j);  j*(i) = argmax_j sim[i, j];  m_i = sim[i, j*(i)] > tau
    h_i <- h_i + alpha * (h_i - r_{j*(i)})   where m_i

Matching is chunked over sources and references with a running maximum, so no more than
``chunk x chunk`` similarities per image exist at once (SDXL-1024 up-blocks have 4096 tokens).
Nothing here reads a tensor value on the host: the functions trace under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from negguide.negtome.settings import DEFAULT_CHUNK  # the settings hold it: they import without torch

NORM_EPS = 1e-6


def match_tokens(
    sources: torch.Tensor, references: torch.Tensor, valid: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best cosine similarity and its reference index for every source token (argmax over references).

    sources [..., N, D], references [..., M, D] (leading dims broadcast), valid [..., M] bool or None
    (invalid references never match). Returns (best_sim [..., N] float32, best_idx [..., N] int64).
    """
    src = F.normalize(sources.float(), dim=-1, eps=NORM_EPS)  # [..., N, D]
    ref = F.normalize(references.float(), dim=-1, eps=NORM_EPS)  # [..., M, D]
    n, m = src.shape[-2], ref.shape[-2]
    best_sims, best_idxs = [], []
    for s0 in range(0, n, chunk):
        src_c = src[..., s0 : s0 + chunk, :]  # [..., c, D]
        best_sim = best_idx = None
        for r0 in range(0, m, chunk):
            sim = src_c @ ref[..., r0 : r0 + chunk, :].transpose(-1, -2)  # [..., c, cr]
            if valid is not None:
                sim.masked_fill_(~valid[..., None, r0 : r0 + chunk], float("-inf"))  # in place: no second block
            value, index = sim.max(dim=-1)  # [..., c]
            index = index + r0
            if best_sim is None:
                best_sim, best_idx = value, index
            else:
                better = value > best_sim  # ties keep the earlier reference, as one argmax would
                best_sim = torch.where(better, value, best_sim)
                best_idx = torch.where(better, index, best_idx)
        best_sims.append(best_sim)
        best_idxs.append(best_idx)
    return torch.cat(best_sims, dim=-1), torch.cat(best_idxs, dim=-1)


def match_tokens_reference_code(
    sources: torch.Tensor, references: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference implementation's matching, kept for comparison: ``sim.max(dim=-2)``.

    It maximises over *sources* for each reference position and then reads position ``p`` as if it were source
    token ``p``; the index it returns is a source index used to pick a reference token. Needs N == M.
    """
    if sources.shape[-2] != references.shape[-2]:
        raise ValueError(
            f"the reference code's matching needs as many reference tokens as source tokens "
            f"({references.shape[-2]} vs {sources.shape[-2]}): use legacy_matching=False"
        )
    return match_tokens(references, sources, None, chunk)  # roles swapped: max over sources per reference position


def push_away(
    sources: torch.Tensor,
    references: torch.Tensor,
    best_sim: torch.Tensor,
    best_idx: torch.Tensor,
    alpha: float,
    threshold: float,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """h_i + alpha * (h_i - r_{j*(i)}) where best_sim > threshold (and keep, the dropout mask), else h_i exactly.

    sources [..., N, D], references [..., M, D] broadcastable to sources' leading dims, best_* [..., N].
    """
    lead = best_idx.shape[:-1]
    refs = references.expand(*lead, *references.shape[-2:])  # a view, no copy: [..., M, D]
    matched = refs.gather(-2, best_idx[..., None].expand(*best_idx.shape, refs.shape[-1]))  # [..., N, D]
    merge = best_sim > threshold  # [..., N]
    if keep is not None:
        merge = merge & keep
    pushed = sources + alpha * (sources - matched.to(sources.dtype))
    return torch.where(merge[..., None], pushed, sources)


def negative_merge(
    sources: torch.Tensor,
    references: torch.Tensor,
    alpha: float,
    threshold: float,
    valid: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    legacy_matching: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Push every source token away from its best-matching reference token (NegToMe, Singh et al., arXiv 2412.01339):
    h <- h + alpha * (h - r_match) where cos(h, r_match) > threshold."""
    if legacy_matching:
        if valid is not None:  # a Python-level check on arguments: no host sync
            raise ValueError("legacy_matching has no reference mask (valid); use legacy_matching=False with a mask")
        best_sim, best_idx = match_tokens_reference_code(sources, references, chunk)
    else:
        best_sim, best_idx = match_tokens(sources, references, valid, chunk)
    return push_away(sources, references, best_sim, best_idx, alpha, threshold, keep)


def others_mask(images: int, tokens: int, device=None) -> torch.Tensor:
    """valid[i, j]: reference token j (of the group's images * tokens) belongs to another image than i. [n, n*N]"""
    owner = torch.arange(images, device=device).repeat_interleave(tokens)  # [n*N]
    return owner[None, :] != torch.arange(images, device=device)[:, None]


def merge_batch_group(
    tokens: torch.Tensor,
    reference: str,
    alpha: float,
    threshold: float,
    keep: torch.Tensor | None = None,
    legacy_matching: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Batch mode on groups of images: tokens [G, n, N, D] -> same shape.

    ``reference="first"``: image 0 of each group is the reference of the others and stays unchanged (the paper's
    code). ``reference="others"``: each image is pushed from the tokens of all other images of its group.
    ``keep`` [G, n, N] is the dropout mask.
    """
    groups, n, count, dim = tokens.shape
    if n < 2:
        return tokens
    if reference == "first":
        rest = tokens[:, 1:]  # [G, n-1, N, D]
        ref = tokens[:, :1]  # [G, 1, N, D]
        merged = negative_merge(
            rest, ref, alpha, threshold, None, None if keep is None else keep[:, 1:], legacy_matching, chunk
        )
        return torch.cat([tokens[:, :1], merged], dim=1)
    if reference == "others":
        ref = tokens.reshape(groups, 1, n * count, dim)  # [G, 1, n*N, D]: every image's tokens
        valid = others_mask(n, count, tokens.device)  # [n, n*N]
        return negative_merge(tokens, ref, alpha, threshold, valid, keep, False, chunk)
    raise ValueError(f"reference = {reference!r} is not 'first' or 'others'")
