"""Tokenizers built from in-memory vocabularies (nothing downloaded): CLIP BPE and T5 unigram.

Used by the bundled ShapeWorld model (one token per caption word) and by the tiny test models.
"""

from __future__ import annotations

END = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bpe_split(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP-style BPE of one word: repeatedly join the adjacent pair of lowest merge rank."""
    parts = list(word[:-1]) + [word[-1] + END]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def word_bpe(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) for CLIP's BPE: specials, every letter a-z alone and word-final, then merges that make
    each word one token. A word's merges join its current pieces left to right ("red": ("r","e"),
    ("re","d</w>")); they are appended after all earlier merges, so earlier words keep their single token."""
    tokens = [BOS, EOS]
    for ch in "abcdefghijklmnopqrstuvwxyz":
        tokens += [ch, ch + END]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words)):
        if not word.isalpha() or not word.islower():
            raise ValueError(f"word {word!r} must be lowercase letters a-z only")
        parts = bpe_split(word, ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in tokens:
                tokens.append(pair[0] + pair[1])
            parts = bpe_split(word, ranks)
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(words, model_max_length: int = 77):
    """A CLIPTokenizer that spells each of ``words`` (lowercase a-z) as one token, other words as letters."""
    from transformers import CLIPTokenizer

    vocab, merges = word_bpe(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_t5_tokenizer(words, model_max_length: int = 512):
    """A T5 (unigram) tokenizer with one piece per word of ``words`` plus single letters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in sorted(set(words))]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
