"""The negguide Gradio demo: a prompt, weighted negatives with windows, and the methods side by side, same seed.

    negguide demo                                 # the bundled ShapeWorld model on http://127.0.0.1:7860
    negguide demo --model ./sd15 --port 7861      # a local diffusers folder (or a hub id)
    negguide demo --share                         # a public gradio.live link (off by default)
    python demos/app.py --no-example              # the same, without the example comparison filled in

The generation logic lives in ``negguide.cli.generation`` (shared with ``negguide generate``); this file only builds the
page. The model is loaded once; one generation runs at a time (the queue holds at most --queue-size requests; the
API goes through it, and a lock around each request restores the pipeline after it: ``negguide.cli.demo_state``).
Clients upload files (at most --max-upload-mb, images at most 16.8 megapixels) or choose the bundled embeddings and
LoRAs and those of the operator's --allow-dir folders; they never name a server path (``negguide.cli.demo_security``).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import socket
import sys
import uuid

import gradio as gr

from negguide.cli import demo_gradio as dg
from negguide.cli import demo_security as sec
from negguide.cli import generation as gen
from negguide.cli.comparison import describe, grid_image, score_line
from negguide.cli.demo import MAX_UPLOAD_MB, QUEUE_SIZE, build_parser
from negguide.cli.demo_state import exclusive
from negguide.cli.errors import user_input
from negguide.nag.settings import FAMILY_DEFAULTS as NAG_DEFAULTS
from negguide.nag.settings import NAGSettings
from negguide.negtome.settings import NegToMeSettings
from negguide.perpneg.settings import PerpNegSettings

ROWS = 3  # negative prompts in the form (the API and CLI take up to gen.MAX_NEGATIVES)
DISPLAY_PIXELS = 192  # gallery images are scaled up (nearest neighbour, pixel-exact) to at least this size
HOST = "127.0.0.1"
DELETE_CACHE = (600, 3600)  # every 10 minutes, delete uploads and outputs older than an hour (all of them at exit)
BUNDLED_EXAMPLE = dict(
    prompt="a red shape", negatives=["a red circle"], weight=1.5, methods=["none", "plain", "perp-neg", "negtome"]
)
SHAPEWORLD_HELP = (
    "ShapeWorld words: a, the, and, to, left, right, of, shape, red, green, blue, yellow, circle, "
    "square, triangle (e.g. 'a red circle to the left of a blue square')."
)
log = logging.getLogger("negguide.demo")
sec.install_pixel_guard()  # PIL refuses decompression bombs in this process, whichever decoder opens them


def _slider(spec: dict, label: str, value=None, **kwargs) -> gr.Slider:
    """A slider whose range, step and default come from a settings dataclass's field metadata."""
    value = spec.get("default") if value is None else value
    return gr.Slider(
        spec["min"], spec["max"], value=value, step=spec.get("step"), label=label, info=spec.get("help"), **kwargs
    )


def _display(image, pixels: int = DISPLAY_PIXELS):
    zoom = max(1, pixels // max(image.size))
    return image if zoom == 1 else image.resize((image.width * zoom, image.height * zoom), 0)  # 0 = NEAREST


def _labelled(image, text: str, request_id: str):
    """A copy carrying PNG text: what made it, and the request it answers. gradio caches an output under the hash
    of its bytes and rewrites that file in place, so two requests with equal pixels would share (and, downloaded
    while the second one writes, truncate) one file; the request id keeps every response's files its own."""
    image = image.copy()
    image.info.update({"negguide": text, "negguide-request": request_id})
    return image


def make_handler(pipe, allow: sec.AllowList | None = None):
    """The generate function of the page (and of the API endpoint /generate): every value is checked by
    ``demo_security.request_from_form``; the generation holds the pipeline for the whole request."""
    allow = allow if allow is not None else sec.AllowList.build(pipe)

    def generate(
        prompt=None,
        methods=None,
        seed=None,
        steps=None,
        size=None,
        batch=None,
        guidance_scale=None,
        negative_1=None,
        weight_1=None,
        start_1=None,
        end_1=None,
        negative_2=None,
        weight_2=None,
        start_2=None,
        end_2=None,
        negative_3=None,
        weight_3=None,
        start_3=None,
        end_3=None,
        with_negatives=None,
        nag_scale=None,
        reference=None,
        reference_mask=None,
        reneg_choice=None,
        reneg_file=None,
        lora_choice=None,
        lora_file=None,
        lora_scale=None,
        negtome_custom=None,
        negtome_alpha=None,
        negtome_threshold=None,
        negtome_low=None,
        negtome_high=None,
        progress=gr.Progress(),
    ):
        form = {k: v for k, v in locals().items() if k in INPUTS}  # all default to None: optional in gradio_client
        names = allow.names()
        try:
            request, names = sec.request_from_form(form, allow, ROWS)
            with exclusive(pipe):  # the queue runs one request at a time; this holds for any other path too
                progress(0.0, desc="starting")
                return outputs(pipe, request, lambda fraction, text: progress(fraction, desc=text))
        except (ValueError, TypeError) as error:
            raise dg.error(sec.client_message(error, names)) from None
        except Exception as error:  # a bug or the machine (out of memory): the log gets the traceback, the page a line
            log.exception("generation failed")
            raise dg.error(
                f"generation failed ({type(error).__name__}): {sec.client_message(error, names, 200)}"
            ) from None

    return generate


INPUTS = tuple(inspect.signature(make_handler(None, sec.AllowList())).parameters)[:-1]  # the form, without progress


def outputs(pipe, request, progress=None) -> tuple:
    """(gallery items with the judge's reading as captions, the comparison grid, a Markdown summary)."""
    results, request_id = gen.run(pipe, request, progress=progress), uuid.uuid4().hex
    described = describe(request)
    gallery = [
        (_labelled(_display(img), f"{described}; {r.method} #{i + 1}", request_id), caption)
        for r in results
        for i, img in enumerate(r.images)
        for caption in [f"{r.method} #{i + 1}" + (f": {r.readings[i]}" if r.readings else "")]
    ]
    return gallery, _labelled(grid_image(results, described), described, request_id), _summary(results)


def _summary(results) -> str:
    judged = results[0].readings is not None
    lines = [
        "| method | with the negatives | seconds |" + (" judged | ShapeWorld judge's reading |" if judged else ""),
        "|---|---|---|" + ("---|---|" if judged else ""),
    ]
    for r in results:
        readings = ", ".join(r.readings).replace("|", " + ") if judged else ""
        judged_cells = f" {score_line(r.scores)} | {readings} |" if judged else ""
        lines.append(f"| {r.method} | {r.role} | {r.seconds:.1f} |" + judged_cells)
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


def build_app(pipe, run_example: bool | None = None, example: dict | None = None, allow_dirs=()) -> gr.Blocks:
    """The page for a loaded pipeline (``negguide.cli.generation.load_pipeline``); ``run_example`` generates the filled-in
    comparison once, at start, so the page opens with its results (default: on for the bundled model, ~2 s).
    ``example`` replaces fields of the filled-in inputs (prompt, negatives, weight, methods, steps, batch).
    ``allow_dirs``: folders whose embeddings and LoRAs clients may choose (besides the bundled ones)."""
    allow = sec.AllowList.build(pipe, allow_dirs)
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
    with dg.GuardedBlocks(
        title="negguide: negative guidance", analytics_enabled=False, delete_cache=DELETE_CACHE
    ) as demo:
        gr.Markdown(
            "## negguide: negative guidance, side by side\n"
            f"Model: **{'the bundled ShapeWorld model (the judge reads every image)' if bundled else sec.model_name(pipe)}**"
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
                with gr.Row():
                    with_negatives = gr.Checkbox(
                        False,
                        label="also apply the negatives in "
                        + ", ".join(gen.COMPOSABLE)
                        + " (Perp-Neg; NAG for nft-lora, whose LoRA runs without CFG)",
                        scale=3,
                    )
                    nag_scale = _slider(
                        {**NAGSettings.field_specs()["negative_weights"], "help": "nag row: s per negative"},
                        "NAG scale",
                        NAG_DEFAULTS.get(pipe.family, NAG_DEFAULTS["sd3"])["weight"],
                        scale=2,
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
                        reference = gr.Image(None, type="filepath", label="NegToMe reference image (negtome-reference)")
                        reference_mask = gr.Image(
                            None, type="filepath", label="reference mask (optional; white = the region to avoid)"
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
                    with gr.Row():
                        reneg = dg.choice(allow, "reneg", "ReNeg negative embedding")
                        reneg_file = dg.upload("... or upload one (.safetensors, from negguide train-reneg)")
                    with gr.Row():
                        lora = dg.choice(allow, "lora", "DiffusionNFT LoRA")
                        lora_file = dg.upload("... or upload one (.safetensors, from negguide train-nft)")
                        lora_scale = _slider(gen.GenerateRequest.field_specs()["lora_scale"], "LoRA scale")
                button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=3):
                grid = gr.Image(
                    None,
                    label="comparison (one row per method)",
                    show_label=False,
                    type="pil",
                    format="png",
                    interactive=False,
                )
                gallery = gr.Gallery(None, label="images", columns=4, format="png", object_fit="contain", height="auto")
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
            nag_scale,
            reference,
            reference_mask,
            reneg,
            reneg_file,
            lora,
            lora_file,
            lora_scale,
            negtome_custom,
            alpha,
            threshold,
            low,
            high,
        ]
        button.click(
            make_handler(pipe, allow),
            inputs,
            [gallery, grid, summary],
            api_name="generate",
            preprocess=False,  # the handler reads the raw values itself (demo_security): no decoding before the checks
            concurrency_limit=1,
            concurrency_id="pipeline",
        )
        initial = [shown[0], shown[1], _example_reference(pipe, d) if bundled else None]
        if any(value is not None for value in initial):  # sent by the page's load event, not in /config as server paths
            # no queue round-trip (a plain request); it returns the images made at start and never touches the pipeline
            demo.load(lambda: initial, None, [gallery, grid, reference], queue=False, **dg.private(demo.load))
    return demo


def _example_reference(pipe, defaults):
    from PIL import Image

    from negguide.shapeworld.bench_negtome import reference_image

    array = reference_image("a red circle", defaults["size"]).permute(1, 2, 0).numpy()
    return Image.fromarray((array * 255).round().astype("uint8"))


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(
    demo: gr.Blocks,
    port: int | None = None,
    share: bool = False,
    queue_size: int = QUEUE_SIZE,
    block: bool = True,
    max_upload_mb: int = MAX_UPLOAD_MB,
) -> str:
    """Queue (one generation at a time, at most ``queue_size`` waiting; the API only through the queue) and launch on
    127.0.0.1 with uploads capped at ``max_upload_mb``; returns the URL. Uploads are deleted at exit."""
    demo.queue(default_concurrency_limit=1, max_size=queue_size, api_open=False)
    try:
        _, url, share_url = demo.launch(
            server_name=HOST,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            show_error=False,
            ssr_mode=False,
            quiet=not block,
            **dg.launch_options(demo, max_upload_mb),
        )
    except OSError as error:  # the port is taken
        raise ValueError(f"cannot serve on {HOST}:{port or 'default port'}: {gen.one_line(error, 200)}") from None
    atexit.register(dg.remove_files, demo)  # also after a kill by SIGTERM (closed like Ctrl+C)
    if block:
        dg.stop_on_sigterm()
        print(f"negguide demo on {share_url or url} (Ctrl+C to stop)", flush=True)
        demo.block_thread()
        demo.close()
        dg.remove_files(demo)
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
        demo = build_app(pipe, args.example, allow_dirs=args.allow_dir)
        url = serve(demo, args.port, args.share, args.queue_size, block, args.max_upload_mb)
    return demo, url


if __name__ == "__main__":  # python demos/app.py [flags]: through the command line's one-line errors
    from negguide.cli import main as negguide_main

    raise SystemExit(negguide_main(["demo", *sys.argv[1:]]))
