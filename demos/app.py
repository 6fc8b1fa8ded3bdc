"""The negguide Gradio demo: a prompt, weighted negatives with windows, and the methods side by side, same seed.

    negguide demo                                 # the bundled ShapeWorld model on http://127.0.0.1:7860
    negguide demo --model ./sd15 --port 7861      # a local diffusers folder (or a hub id)
    negguide demo --share                         # a public gradio.live link (off by default)
    python demos/app.py --no-example              # the same, without the example comparison filled in

The generation logic lives in ``negguide.cli.generation`` (shared with ``negguide generate``); this file only builds the
page. The model is loaded once; one generation runs at a time (the queue holds at most --queue-size requests).
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import gradio as gr

from negguide.cli import generation as gen
from negguide.cli import inputs as gen_inputs
from negguide.cli.demo import QUEUE_SIZE, build_parser
from negguide.cli.errors import user_input
from negguide.negtome.settings import NegToMeSettings
from negguide.perpneg.settings import PerpNegSettings

ROWS = 3  # negative prompts in the form (the API and CLI take up to gen.MAX_NEGATIVES)
DISPLAY_PIXELS = 192  # gallery images are scaled up (nearest neighbour, pixel-exact) to at least this size
HOST = "127.0.0.1"
BUNDLED_EXAMPLE = dict(
    prompt="a red shape", negatives=["a red circle"], weight=1.5, methods=["none", "plain", "perp-neg", "negtome"]
)
SHAPEWORLD_HELP = (
    "ShapeWorld words: a, the, and, to, left, right, of, shape, red, green, blue, yellow, circle, "
    "square, triangle (e.g. 'a red circle to the left of a blue square')."
)
log = logging.getLogger("negguide.demo")


def _error(message: str) -> gr.Error:
    """A gr.Error for the page (no traceback on the server log either: it is the user's input)."""
    try:
        return gr.Error(message, print_exception=False)
    except TypeError:  # gradio releases before print_exception
        return gr.Error(message)


def _slider(spec: dict, label: str, value=None, **kwargs) -> gr.Slider:
    """A slider whose range, step and default come from a settings dataclass's field metadata."""
    value = spec.get("default") if value is None else value
    return gr.Slider(
        spec["min"], spec["max"], value=value, step=spec.get("step"), label=label, info=spec.get("help"), **kwargs
    )


def _display(image, pixels: int = DISPLAY_PIXELS):
    zoom = max(1, pixels // max(image.size))
    return image if zoom == 1 else image.resize((image.width * zoom, image.height * zoom), 0)  # 0 = NEAREST


def make_handler(pipe):
    """The generate function of the page (and of the API endpoint /generate)."""

    def generate(
        prompt,
        methods,
        seed,
        steps,
        size,
        batch,
        guidance_scale,
        negative_1,
        weight_1,
        start_1,
        end_1,
        negative_2,
        weight_2,
        start_2,
        end_2,
        negative_3,
        weight_3,
        start_3,
        end_3,
        with_negatives,
        reference,
        reference_mask,
        reneg_path,
        lora_path,
        lora_scale,
        negtome_custom,
        negtome_alpha,
        negtome_threshold,
        negtome_low,
        negtome_high,
        progress=gr.Progress(),
    ):
        rows = [
            (negative_1, weight_1, start_1, end_1),
            (negative_2, weight_2, start_2, end_2),
            (negative_3, weight_3, start_3, end_3),
        ]
        rows = [(t.strip(), w, (s, e)) for t, w, s, e in rows if isinstance(t, str) and t.strip()]
        try:
            request = gen.GenerateRequest(
                prompt=prompt or "",
                methods=tuple(methods or ()),
                perp_neg=PerpNegSettings(
                    negatives=[r[0] for r in rows],
                    negative_weights=[r[1] for r in rows],
                    negative_windows=[r[2] for r in rows],
                ),
                sampling=gen.SamplingSettings(
                    seed=_int(seed),
                    steps=_int(steps),
                    height=_int(size),
                    width=_int(size),
                    batch=_int(batch),
                    guidance_scale=guidance_scale,
                ),
                negtome_overrides=dict(
                    alpha=negtome_alpha, threshold=negtome_threshold, window=(negtome_low, negtome_high)
                )
                if negtome_custom
                else {},
                reference_image=reference,
                reference_mask=reference_mask,
                reneg=(reneg_path or "").strip() or None,
                lora=(lora_path or "").strip() or None,
                lora_scale=lora_scale,
                with_negatives=bool(with_negatives),
            )
            progress(0.0, desc="starting")
            return outputs(pipe, request, lambda fraction, text: progress(fraction, desc=text))
        except (ValueError, TypeError) as error:
            raise _error(gen.one_line(error)) from None
        except Exception as error:  # a bug or the machine (out of memory): the log gets the traceback, the page a line
            log.exception("generation failed")
            raise _error(f"generation failed ({type(error).__name__}): {gen.one_line(error, 200)}") from None

    return generate


def outputs(pipe, request, progress=None) -> tuple:
    """(gallery items with the judge's reading as captions, the comparison grid, a Markdown summary)."""
    results = gen.run(pipe, request, progress=progress)
    gallery = [
        (_display(img), f"{r.method} #{i + 1}" + (f": {r.readings[i]}" if r.readings else ""))
        for r in results
        for i, img in enumerate(r.images)
    ]
    return gallery, gen.grid_image(results, gen.describe(request)), _summary(results)


def _int(value):
    return None if value is None else int(value) if isinstance(value, float) and value.is_integer() else value


def _summary(results) -> str:
    judged = results[0].readings is not None
    lines = [
        "| method | seconds |" + (" ShapeWorld judge's reading |" if judged else ""),
        "|---|---|" + ("---|" if judged else ""),
    ]
    for r in results:
        readings = ", ".join(r.readings).replace("|", " + ") if judged else ""
        lines.append(f"| {r.method} | {r.seconds:.1f} |" + (f" {readings} |" if judged else ""))
    return "\n".join(lines)


def example_outputs(pipe, example: dict) -> tuple:
    """The filled-in comparison, generated once when the app starts (a page opens with its results shown)."""
    weights = [example["weight"]] * len(example["negatives"])
    request = gen.GenerateRequest(
        example["prompt"],
        tuple(example["methods"]),
        perp_neg=PerpNegSettings(negatives=example["negatives"], negative_weights=weights),
        sampling=gen.SamplingSettings(steps=example.get("steps"), batch=example["batch"]),
    )
    return outputs(pipe, request)


def build_app(pipe, run_example: bool | None = None, example: dict | None = None) -> gr.Blocks:
    """The page for a loaded pipeline (``negguide.cli.generation.load_pipeline``); ``run_example`` generates the filled-in
    comparison once, at start, so the page opens with its results (default: on for the bundled model, ~2 s).
    ``example`` replaces fields of the filled-in inputs (prompt, negatives, weight, methods, steps, batch)."""
    d = gen.model_defaults(pipe)
    bundled = d["bundled"]
    sampling, pn, nt = gen.SamplingSettings.field_specs(), PerpNegSettings.field_specs(), NegToMeSettings.field_specs()
    resolved = NegToMeSettings().resolved(pipe.family)
    example = {
        **(BUNDLED_EXAMPLE if bundled else dict(prompt="", negatives=[], weight=1.0, methods=["none", "perp-neg"])),
        "steps": d["steps"],
        "batch": sampling["batch"]["default"],
        **(example or {}),
    }
    if run_example is None:
        run_example = bundled
    if run_example and not example["prompt"]:
        raise ValueError("--example needs the bundled model (other models start with an empty prompt)")
    shown = example_outputs(pipe, example) if run_example else (None, None, "")
    with gr.Blocks(title="negguide: negative guidance", analytics_enabled=False) as demo:
        gr.Markdown(
            "## negguide: negative guidance, side by side\n"
            f"Model: **{'the bundled ShapeWorld model (the judge reads every image)' if bundled else pipe.name_or_path}**"
            f" ({pipe.family}, {d['size']}x{d['size']} px). Every method runs with the same seed."
        )
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(
                    example["prompt"],
                    label="prompt",
                    max_length=gen.MAX_PROMPT_CHARS,
                    info=SHAPEWORLD_HELP if bundled else None,
                    placeholder="a photo of a dog",
                )
                methods = gr.CheckboxGroup(list(gen.METHODS), value=example["methods"], label="methods (side by side)")
                with gr.Accordion("what the methods do", open=False):
                    gr.Markdown("\n".join(f"- **{k}**: {v}" for k, v in gen.METHODS.items()))
                negatives = []
                for i in range(ROWS):
                    with gr.Row():
                        text = example["negatives"][i] if i < len(example["negatives"]) else ""
                        negatives += [
                            gr.Textbox(text, label=f"negative {i + 1}", max_length=gen.MAX_PROMPT_CHARS, scale=3),
                            _slider(
                                {**pn["negative_weights"], "help": None},
                                "weight",
                                value=example["weight"] if text else None,
                                scale=2,
                            ),
                            _slider(
                                {**pn["negative_windows"], "help": None}, "from (fraction of the run)", 0.0, scale=2
                            ),
                            _slider({**pn["negative_windows"], "help": None}, "to", 1.0, scale=2),
                        ]
                with_negatives = gr.Checkbox(
                    False, label="also apply the negatives (Perp-Neg) in " + ", ".join(gen.COMPOSABLE)
                )
                with gr.Row():
                    seed = _slider(sampling["seed"], "seed", precision=0)
                    steps = _slider(sampling["steps"], "steps", example["steps"], precision=0)
                    size = _slider(
                        {
                            **sampling["height"],
                            "max": d["size_max"],
                            "step": d["size_step"],
                            "min": max(sampling["height"]["min"], d["size_step"]),
                            "help": "height = width, pixels",
                        },
                        "size",
                        d["size"],
                        precision=0,
                    )
                    batch = _slider(sampling["batch"], "images per method", example["batch"], precision=0)
                    guidance = _slider(sampling["guidance_scale"], "guidance scale", d["guidance_scale"])
                with gr.Accordion("NegToMe, ReNeg, DiffusionNFT", open=False):
                    with gr.Row():
                        reference = gr.Image(
                            _example_reference(pipe, d) if bundled else None,
                            type="pil",
                            image_mode="RGB",
                            label="NegToMe reference image (negtome-reference)",
                        )
                        reference_mask = gr.Image(
                            None,
                            type="pil",
                            image_mode="L",
                            label="reference mask (optional; white = the region to avoid)",
                        )
                    negtome_custom = gr.Checkbox(
                        False,
                        label="custom NegToMe settings (off: the model's preset"
                        + (", tuned on ShapeWorld)" if bundled else ")"),
                    )
                    with gr.Row():
                        alpha = _slider({**nt["alpha"], "default": resolved.alpha}, "alpha")
                        threshold = _slider({**nt["threshold"], "default": resolved.threshold}, "threshold")
                        low = _slider(
                            {**nt["window"], "help": "noise level where merging starts (1 = noise)"},
                            "window low",
                            resolved.window[0],
                        )
                        high = _slider(
                            {**nt["window"], "help": "noise level where merging ends"},
                            "window high",
                            resolved.window[1],
                        )
                    reneg = gr.Textbox(
                        _bundled_reneg_path(pipe),
                        label="ReNeg negative embedding (.safetensors)",
                        placeholder="runs/reneg/negative_embedding.safetensors (negguide train-reneg)",
                    )
                    with gr.Row():
                        lora = gr.Textbox(
                            _bundled_path(gen_inputs.BUNDLED_NFT_LORA) if bundled else "",
                            scale=3,
                            label="DiffusionNFT LoRA (folder or .safetensors)",
                            placeholder="runs/nft/lora (negguide train-nft)",
                        )
                        lora_scale = _slider(gen.GenerateRequest.field_specs()["lora_scale"], "LoRA scale", scale=1)
                button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=3):
                grid = gr.Image(
                    shown[1],
                    label="comparison (one row per method)",
                    show_label=False,
                    type="pil",
                    format="png",
                    interactive=False,
                )
                gallery = gr.Gallery(
                    shown[0], label="images", columns=4, format="png", object_fit="contain", height="auto"
                )
                summary = gr.Markdown(shown[2])
        inputs = [
            prompt,
            methods,
            seed,
            steps,
            size,
            batch,
            guidance,
            *negatives,
            with_negatives,
            reference,
            reference_mask,
            reneg,
            lora,
            lora_scale,
            negtome_custom,
            alpha,
            threshold,
            low,
            high,
        ]
        handler = make_handler(pipe)
        button.click(handler, inputs, [gallery, grid, summary], api_name="generate")
    return demo


def _example_reference(pipe, defaults):
    from PIL import Image

    from negguide.shapeworld.bench_negtome import reference_image

    array = reference_image("a red circle", defaults["size"]).permute(1, 2, 0).numpy()
    return Image.fromarray((array * 255).round().astype("uint8"))


def _bundled_reneg_path(pipe) -> str:
    """The bundled negative embedding of a bundled ShapeWorld model (SD3 or SD), or "" for any other model."""
    from negguide.shapeworld.assets import BUNDLED_EMBEDDINGS

    path = BUNDLED_EMBEDDINGS.get(getattr(pipe, "negguide_shapeworld", None))
    return _bundled_path(path) if path else ""


def _bundled_path(path: str) -> str:
    """A bundled asset's path for a default text box, or "" when this checkout does not have it."""
    path = os.path.normpath(path)
    return path if os.path.exists(path) else ""


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(
    demo: gr.Blocks, port: int | None = None, share: bool = False, queue_size: int = QUEUE_SIZE, block: bool = True
) -> str:
    """Queue (one generation at a time, at most ``queue_size`` waiting) and launch on 127.0.0.1; returns the URL."""
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    try:
        _, url, share_url = demo.launch(
            server_name=HOST,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            show_error=False,
            ssr_mode=False,
            quiet=not block,
        )
    except OSError as error:  # the port is taken
        raise ValueError(f"cannot serve on {HOST}:{port or 'default port'}: {gen.one_line(error, 200)}") from None
    if block:
        print(f"negguide demo on {share_url or url} (Ctrl+C to stop)", flush=True)
        demo.block_thread()
    return url


def main(argv=None, block: bool = True):
    """``negguide demo``'s flags (parsed by :func:`negguide.cli.demo.build_parser`) -> (the page, its URL)."""
    return launch(build_parser().parse_args(argv), block)


def launch(args, block: bool = True):
    """Load the model, build the page and serve it, from parsed ``negguide demo`` flags."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with user_input():
        pipe = gen.load_pipeline(args.model, args.device, args.dtype)
        demo = build_app(pipe, args.example)
        url = serve(demo, args.port, args.share, args.queue_size, block)
    return demo, url


if __name__ == "__main__":  # python demos/app.py [flags]: through the command line's one-line errors
    from negguide.cli import main as negguide_main

    raise SystemExit(negguide_main(["demo", *sys.argv[1:]]))
