"""How a comparison reports itself: what each row does with the negatives, the judge's figures per row on the bundled
ShapeWorld model, and the grid (one row per method, labelled with both and with the row's time)."""

from __future__ import annotations

import re

#: what each method does with the negatives (``--with-negatives`` adds them to the composable methods)
ROLES = {
    "none": "ignores the negatives (baseline)",
    "plain": "negatives as negative_prompt",
    "perp-neg": "negatives removed by Perp-Neg",
    "nag": "negatives inside attention (NAG)",
    "negtome": "batch diversity; ignores the negatives",
    "negtome-reference": "away from the reference; ignores the negatives",
    "reneg": "learned negative; ignores the negatives",
    "nft-lora": "DiffusionNFT LoRA; ignores the negatives",
}
WITH_NEGATIVES = {
    "negtome": "batch diversity + Perp-Neg",
    "negtome-reference": "away from the reference + Perp-Neg",
    "reneg": "learned negative as u + Perp-Neg",
    "nft-lora": "DiffusionNFT LoRA, negatives by NAG",
}


def negative_role(method: str, request, family: str = "") -> str:
    """One line for the row's label: what ``method`` does with ``request``'s negatives."""
    if not request.perp_neg.negatives:
        return {"none": "baseline"}.get(method, ROLES.get(method, "").split(";")[0])
    if request.with_negatives and method in WITH_NEGATIVES:
        return WITH_NEGATIVES[method]
    return ROLES.get(method, "")


def _attributes(request) -> list[str]:
    """The ShapeWorld colours and shapes the prompt and the negatives name, negatives first (e.g. circle, red)."""
    from negguide.shapeworld.world import COLOURS, SHAPES

    found: list[str] = []
    for text in [*request.perp_neg.negatives, request.prompt]:
        for word in re.findall(r"[a-z]+", text.lower()):
            if (word in COLOURS or word in SHAPES) and word not in found:
                found.append(word)
    return found


def judge_scores(images, request) -> dict:
    """The judge's figures of one row: P(attribute) for every colour and shape the negatives and the prompt name,
    and the prompt accuracy (the fraction of images that show what the prompt states)."""
    import numpy as np

    from negguide.shapeworld.judge import attribute_probability, prompt_accuracy

    arrays = [np.asarray(img.convert("RGB")) for img in images]
    scores = {f"P({attr})": attribute_probability(arrays, attr) for attr in _attributes(request)}
    try:
        scores["accuracy"] = prompt_accuracy(arrays, [request.prompt] * len(arrays))
    except (ValueError, KeyError):  # a prompt the judge cannot read (outside the ShapeWorld grammar)
        pass
    return scores


def score_line(scores: dict | None) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in (scores or {}).items())


def describe(request) -> str:
    negatives = ", ".join(f"{t} ({w:g})" for t, w in zip(request.perp_neg.negatives, request.perp_neg.negative_weights))
    return f"{request.prompt}" + (f"  minus  {negatives}" if negatives else "") + f"  seed {request.sampling.seed}"


def grid_image(results: list, title: str = "", min_tile: int = 128):
    """One row per method, the images side by side (scaled up, pixel-exact); each row labelled with the method,
    what it does with the negatives, its time (after warm-up when the run had one) and the judge's figures; the
    judge's reading under each image."""
    from PIL import Image, ImageDraw

    w, h = results[0].images[0].size
    zoom = max(1, min_tile // max(w, h))
    tw, th = w * zoom, h * zoom
    label_w, head, foot = 250, 22 if title else 4, 16 if results[0].readings else 2
    columns = max(len(r.images) for r in results)
    row_h = max(th, 64) + foot + 4
    canvas = Image.new("RGB", (label_w + columns * (tw + 4), head + len(results) * row_h), (236, 236, 236))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), title[:200], fill="black")
    for r, result in enumerate(results):
        y = head + r * row_h
        lines = [result.method, result.role, f"{result.seconds:.1f} s"]
        if result.scores:
            items = list(result.scores.items())
            lines += ["  ".join(f"{k} {v:.2f}" for k, v in items[i : i + 2]) for i in range(0, len(items), 2)]
        draw.multiline_text((4, y + 4), "\n".join(line for line in lines if line), fill="black")
        for c, img in enumerate(result.images):
            x = label_w + c * (tw + 4)
            canvas.paste(img.convert("RGB").resize((tw, th), Image.NEAREST), (x, y))
            if result.readings:
                draw.text((x + 2, y + th + 2), result.readings[c], fill=(70, 70, 70))
    return canvas
