"""The ShapeWorld efficacy benchmark: each method's paper claim as a judged number on the bundled model.

Scenarios fix a prompt, a negative and the attributes to read back; methods register
themselves in ``METHODS`` (a name -> function that generates a batch for a scenario). Every (scenario, method)
runs over several seeds; the result is a Markdown table, a JSON file and one PNG grid per scenario
(``negguide bench``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from negguide.core.settings import Settings, setting
from negguide.shapeworld.assets import DEFAULT_MODEL
from negguide.shapeworld.judge import (
    attribute_probability,
    detect_objects,
    distinct_pairs,
    mean_pairwise_distance,
    prompt_accuracy,
)


@dataclass(frozen=True)
class Scenario:
    """A prompt, what to leave out, and the attributes whose probability the judge reports."""

    name: str
    prompt: str
    negative: str | None
    attributes: tuple
    claim: str
    kind: str = "negative"  # "negative" (a negative prompt), "diversity" (a batch) or "reference" (an image to avoid)
    reference: str | None = None  # the caption of the reference image ("reference" scenarios)

    @property
    def title(self) -> str:
        if self.kind == "diversity":
            return f"{self.prompt}: a batch, as diverse as it can be"
        if self.kind == "reference":
            return f"{self.prompt}  away from the image of  {self.reference}"
        return f"{self.prompt}  minus  {self.negative}"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "negation", "a circle", "red", ("red", "circle"), "'a circle' minus 'red' lowers P(red) and keeps P(circle)"
        ),
        Scenario(
            "overlap",
            "a red shape",
            "a red circle",
            ("red", "circle"),
            "Perp-Neg: 'a red shape' minus 'a red circle' lowers P(circle) while P(red) stays high; "
            "plain negative prompting loses the red",
        ),
        Scenario(
            "diversity",
            "a shape",
            None,
            ("red", "circle"),
            "NegToMe: more distinct (colour, shape) pairs and a larger pairwise distance in a batch, "
            "prompt accuracy within 5 points",
            kind="diversity",
        ),
        Scenario(
            "reference",
            "a circle",
            None,
            ("red", "circle"),
            "NegToMe with the image of a red circle as reference: P(red) falls, P(circle) stays",
            kind="reference",
            reference="a red circle",
        ),
    )
}
PLUGINS = ("negguide.shapeworld.bench_negtome", "negguide.shapeworld.bench_nag")  # modules that register more methods


@dataclass(frozen=True)
class BenchSettings(Settings):
    """Sampling settings shared by every method (the bundled model's defaults); :meth:`quick` is the smoke subset."""

    guidance_scale: float = setting(5.0, "classifier-free guidance scale", min=0.0, max=100.0)
    steps: int = setting(20, "denoising steps", min=1, max=1000)
    images_per_seed: int = setting(16, "images per (scenario, method, seed)", min=1, max=1024)
    seeds: tuple[int, ...] = setting((20_000, 20_001, 20_002, 20_003), "seeds of the runs", min=0, max=2**63 - 1)
    perp_neg_weight: float = setting(1.5, "the negative's weight of the perp-neg method", min=0.0, max=5.0)
    extra: dict = setting({"max_sequence_length": 0}, "more pipeline arguments")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed, e.g. (20000,)")

    @classmethod
    def quick(cls, **overrides) -> BenchSettings:
        """The smoke subset (``negguide bench --quick``): 2 seeds of 8 images."""
        return cls(**{**QUICK, **overrides})


QUICK = {"seeds": (20_000, 20_001), "images_per_seed": 8}
Generator = Callable[["object", Scenario, int, BenchSettings], np.ndarray]
METHODS: dict[str, Generator] = {}
METHOD_KINDS: dict[str, tuple] = {}
KINDS = ("negative", "diversity", "reference")


def register_method(name: str, kinds: tuple = ("negative",)):
    """Decorator: add a method for the scenario kinds it serves (later methods register from their own modules)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"kinds {unknown} are not among {KINDS}")

    def wrap(fn: Generator) -> Generator:
        METHODS[name] = fn
        METHOD_KINDS[name] = tuple(kinds)
        return fn

    return wrap


def load_plugins() -> None:
    """Import the modules that register their methods (NegToMe, ...)."""
    import importlib

    for module in PLUGINS:
        importlib.import_module(module)


def _generate(pipe, scenario: Scenario, seed: int, settings: BenchSettings, **options) -> np.ndarray:
    import torch

    out = pipe(
        scenario.prompt,
        num_images_per_prompt=settings.images_per_seed,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **settings.extra,
        **options,
    )
    return out.images  # [n, H, W, 3] in [0, 1]


@register_method("none", kinds=KINDS)
def _none(pipe, scenario, seed, settings):
    return _generate(pipe, scenario, seed, settings)


@register_method("plain negative")
def _plain(pipe, scenario, seed, settings):
    return _generate(pipe, scenario, seed, settings, negatives=[scenario.negative], guidance_mode="plain")


@register_method("perp-neg")
def _perp(pipe, scenario, seed, settings):
    return _generate(
        pipe, scenario, seed, settings, negatives=[scenario.negative], negative_weights=[settings.perp_neg_weight]
    )


def judge_batch(images: np.ndarray, scenario: Scenario) -> dict:
    metrics = {f"P({a})": attribute_probability(images, a) for a in scenario.attributes}
    metrics["prompt accuracy"] = prompt_accuracy(images, scenario.prompt)
    metrics["distinct pairs"] = float(distinct_pairs(images))
    metrics["pairwise distance"] = mean_pairwise_distance(images)
    return metrics


def run_bench(pipe, scenarios=None, methods=None, settings: BenchSettings | None = None, progress: bool = True) -> dict:
    """Every (scenario, method) over the seeds: mean and std of each metric across seeds, plus the first seed's
    images for the grids. ``pipe`` must accept negguide's arguments (a PerpNegPipeline)."""
    from tqdm.auto import tqdm

    load_plugins()
    settings = settings or BenchSettings()
    scenarios = [SCENARIOS[s] if isinstance(s, str) else s for s in (scenarios or list(SCENARIOS))]
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; registered: {sorted(METHODS)}")
    results: dict = {"settings": asdict(settings), "scenarios": {}}
    jobs = [(s, m, seed) for s in scenarios for m in methods if s.kind in METHOD_KINDS[m] for seed in settings.seeds]
    per: dict = {}
    images: dict = {}
    for scenario, method, seed in tqdm(jobs, desc="bench", disable=not progress):
        batch = METHODS[method](pipe, scenario, seed, settings)
        per.setdefault((scenario.name, method), []).append(judge_batch(batch, scenario))
        images.setdefault((scenario.name, method), batch)
    for scenario in scenarios:
        rows = {}
        for method in [m for m in methods if (scenario.name, m) in per]:
            runs = per[(scenario.name, method)]
            rows[method] = {
                k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))}
                for k in runs[0]
            }
        results["scenarios"][scenario.name] = {"scenario": asdict(scenario), "methods": rows}
    results["images"] = images
    return results


def _cell(metric: str, value: dict) -> str:
    digits = 3 if metric == "pairwise distance" else 2  # its differences are in the third decimal
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def markdown_table(results: dict) -> str:
    lines = []
    for name, block in results["scenarios"].items():
        sc = block["scenario"]
        metrics = list(next(iter(block["methods"].values())))
        lines.append(f"**{name}**: {Scenario(**sc).title}. Claim: {sc['claim']}.\n")
        lines.append("| method | " + " | ".join(metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for method, row in block["methods"].items():
            lines.append(f"| {method} | " + " | ".join(_cell(m, row[m]) for m in metrics) + " |")
        lines.append("")
    return "\n".join(lines)


SHORT_SHAPE = {"circle": "circ", "square": "sq", "triangle": "tri"}


def judge_reading(image) -> str:
    """The judge's reading of one image in a few characters, e.g. "red circ" or "red sq|blue tri"."""
    objects = detect_objects(image)
    if not objects:
        return "(nothing)"
    return "|".join(f"{o.colour} {SHORT_SHAPE.get(o.shape, o.shape)}" for o in objects)


def save_grids(results: dict, folder: str, per_row: int = 8, scale: int = 2) -> list[str]:
    """One PNG per scenario: a row of images per method, labelled with the judged numbers, and the judge's
    reading under every image (so a person can check the judge against their own reading)."""
    from PIL import Image, ImageDraw

    paths = []
    for name, block in results["scenarios"].items():
        methods = list(block["methods"])
        tiles = [results["images"][(name, m)][:per_row] for m in methods]
        h, w = tiles[0].shape[1] * scale, tiles[0].shape[2] * scale
        label_w, head, foot = 190, 22, 14
        canvas = Image.new("RGB", (label_w + per_row * (w + 2), head + len(methods) * (h + foot + 2)), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 4), Scenario(**block["scenario"]).title, fill="black")
        for r, (method, batch) in enumerate(zip(methods, tiles)):
            y = head + r * (h + foot + 2)
            row = block["methods"][method]
            text = [method] + [f"{k} {row[k]['mean']:.2f}" for k in row if k.startswith("P(")]
            draw.multiline_text((4, y + 4), "\n".join(text), fill="black")
            for c, img in enumerate(batch):
                tile = Image.fromarray((img * 255).round().astype("uint8")).resize((w, h), Image.NEAREST)
                canvas.paste(tile, (label_w + c * (w + 2), y))
                draw.text((label_w + c * (w + 2) + 2, y + h + 1), judge_reading(img), fill=(90, 90, 90))
        path = os.path.join(folder, f"{name}.png")
        canvas.save(path)
        paths.append(path)
    return paths


def sequence_kwargs(pipe) -> dict:
    """Call options a ShapeWorld model needs: no T5 tokens where the family takes them (SD3/Flux; the bundled SD3
    model was trained with 0..256 of them and 0 is faster), nothing for SD. ``pipe``: a PerpNegPipeline (by its
    family) or a plain diffusers pipeline (by its call's parameters)."""
    family = getattr(pipe, "family", None)
    if family is not None:
        takes_tokens = family in ("sd3", "flux")
    else:
        import inspect

        takes_tokens = "max_sequence_length" in inspect.signature(pipe.__call__).parameters
    return {"max_sequence_length": 0} if takes_tokens else {}


def load_bench_pipeline(model: str | None = None):
    """The bundled ShapeWorld model (or a diffusers folder) as a PerpNegPipeline, offline."""
    from negguide.perpneg.pipeline import PerpNegPipeline

    folder = os.path.abspath(model or DEFAULT_MODEL)
    if not os.path.isdir(folder):
        raise ValueError(f"model folder {folder!r} does not exist; pass --model DIR or train the bundled model")
    pipe = PerpNegPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe
