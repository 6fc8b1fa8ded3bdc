"""Diffusers' mixins on negguide's pipelines (negguide/perpneg/mixins.py): each forwarded name reaches the family
pipeline (or the component) that shares its modules, exists only where that target has it, and works inside a
negguide call: LoRA, textual inversion (an A1111/ComfyUI negative embedding file as a negative), CPU offload, VAE
tiling/slicing, attention backends. Every test builds its own tiny pipeline: these methods mutate modules."""

from __future__ import annotations

import contextlib
import io
import re
from unittest import mock

import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from helpers import REPO, call_kwargs
from safetensors.torch import save_file

from negguide import NegToMePipeline, PerpNegPipeline
from negguide.perpneg.mixins import FORWARDED
from negguide.testing import tiny_pipeline

PROMPT = "a red shape"
DENOISER = {"sd": "unet", "sdxl": "unet", "sd3": "transformer", "flux": "transformer"}
#: what each family lacks in diffusers 0.42 (SD3: no textual-inversion loader; only Flux's processors take a backend)
MISSING = {
    "sd": {"set_attention_backend", "reset_attention_backend"},
    "sdxl": {"set_attention_backend", "reset_attention_backend"},
    "sd3": {
        "set_attention_backend",
        "reset_attention_backend",
        "load_textual_inversion",
        "unload_textual_inversion",
        "maybe_convert_prompt",
    },
    "flux": set(),
}


def fresh(family: str, cls=PerpNegPipeline):
    pipe = cls.from_pipe(tiny_pipeline(family))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, family: str, **options):
    return pipe(PROMPT, **options, **call_kwargs(family)).images


def assert_close(got, expected):  # a different summation order (fused weights, sliced decode) moves the last bits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


# ----------------------------------------------------------------------------- the forwarding itself
def test_forwarded_names_exist_where_the_family_has_them(family):
    pipe = fresh(family)
    missing = {name for name in FORWARDED if not hasattr(pipe, name)}
    assert missing == MISSING[family]
    assert not missing & set(dir(pipe)) and (set(FORWARDED) - missing) <= set(dir(pipe))
    inner = pipe.family_pipeline()
    assert pipe.load_lora_weights.__self__ is inner and pipe.enable_model_cpu_offload.__self__ is inner
    assert pipe.enable_vae_tiling.__self__ is pipe.vae
    assert pipe.load_lora_weights.__doc__ == type(inner).load_lora_weights.__doc__
    assert "LoRA" in PerpNegPipeline.load_lora_weights.__doc__  # class access documents the forwarding
    for name in missing:
        with pytest.raises(AttributeError, match=rf"{name} is not available on the {family} family"):
            getattr(pipe, name)
    with pytest.raises(AttributeError, match="'PerpNegPipeline' object has no attribute 'no_such_method'"):
        pipe.no_such_method  # noqa: B018
    assert pipe.force_zeros_for_empty_prompt is True  # config entries still read through (diffusers warns)


def test_missing_names_say_the_alternative():
    with pytest.raises(
        AttributeError, match="StableDiffusion3Pipeline has no load_textual_inversion.*negative_prompt_embeds"
    ):
        fresh("sd3").load_textual_inversion("bad.safetensors")
    with pytest.raises(AttributeError, match=r"pipe\.unet \(UNet2DConditionModel\).*enable_xformers_memory_efficient"):
        fresh("sd").set_attention_backend("native")


def test_negtome_pipeline_forwards_too():
    pipe = fresh("sdxl", NegToMePipeline)
    assert pipe.load_textual_inversion.__wrapped__.__self__ is pipe.family_pipeline()
    assert pipe.fuse_lora.__self__ is pipe.family_pipeline()


# ----------------------------------------------------------------------------- LoRA
def lora_state(denoiser, seed: int = 0) -> dict:
    """A rank-4 non-zero LoRA (peft keys) on the denoiser's attention projections."""
    generator, state = torch.Generator().manual_seed(seed), {}
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and re.search(r"attn\d?\.(to_q|to_k|to_v|to_out\.0)$", name):
            state[f"{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator) * 0.3
            state[f"{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator) * 0.3
    return state


def test_lora_load_set_fuse_unload(family, tmp_path):
    pipe = fresh(family)
    options = dict(negatives=["red"], negative_weights=[1.5], negative_windows=[(0.25, 1.0)])
    base = run(pipe, family, **options)
    attr = DENOISER[family]
    type(pipe.family_pipeline()).save_lora_weights(tmp_path, **{f"{attr}_lora_layers": lora_state(getattr(pipe, attr))})

    pipe.load_lora_weights(tmp_path, adapter_name="style")
    assert pipe.get_list_adapters() == {attr: ["style"]} and pipe.get_active_adapters() == ["style"]
    with_lora = run(pipe, family, **options)
    assert (with_lora - base).abs().max() > 1e-2 * base.abs().max()  # the LoRA sits in the shared denoiser
    stock = tiny_pipeline(family)  # the same LoRA loaded into the diffusers pipeline directly
    stock.load_lora_weights(tmp_path, adapter_name="style")
    assert torch.equal(with_lora, run(fresh_from(stock), family, **options))

    pipe.set_adapters(["style"], adapter_weights=[0.0])
    assert torch.equal(run(pipe, family, **options), base)  # weight 0 adds exact zeros
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    pipe.fuse_lora()
    assert_close(run(pipe, family, **options), with_lora)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}
    assert not any("lora" in name for name, _ in getattr(pipe, attr).named_modules())
    assert_close(run(pipe, family, **options), base)  # fuse + unfuse round the weights


def fresh_from(stock):
    pipe = PerpNegPipeline.from_pipe(stock)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- textual inversion
def write_row(encoder, tokenizer, word: str, row: torch.Tensor) -> None:
    """Put ``row`` into the input embedding of ``word`` (a single token of the tiny vocabulary)."""
    (token_id,) = tokenizer(word, add_special_tokens=False).input_ids
    with torch.no_grad():
        encoder.get_input_embeddings().weight[token_id] = row


def test_a1111_negative_embedding_file_as_negative(tmp_path):
    """An A1111/ComfyUI file ("emb_params" [2, width]) loaded as "<bad>" is exactly a prompt whose 2 tokens have
    those input embeddings: a reference model with the rows written into "ugly" and "blurry" gives the same output
    in negatives (Perp-Neg, weights, windows), in negative_prompt, in guidance_mode="plain" and on the NAG path."""
    pipe = fresh("sd")
    rows = torch.randn(2, pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    save_file({"emb_params": rows}, tmp_path / "bad.safetensors")
    pipe.load_textual_inversion(tmp_path / "bad.safetensors", token="<bad>")
    assert (
        pipe.family_pipeline().tokenizer is pipe.tokenizer and pipe.family_pipeline().text_encoder is pipe.text_encoder
    )
    assert pipe.maybe_convert_prompt("<bad>", pipe.tokenizer) == "<bad> <bad>_1"
    ids = pipe.tokenizer.convert_tokens_to_ids(["<bad>", "<bad>_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], rows)

    reference = fresh("sd")
    for word, row in zip(("ugly", "blurry"), rows):
        write_row(reference.text_encoder, reference.tokenizer, word, row)
    cases = [
        dict(
            negatives=["<bad>", "a red circle"], negative_weights=[1.5, 1.0], negative_windows=[(0.0, 1.0), (0.5, 1.0)]
        ),
        dict(negative_prompt="<bad>"),
        dict(negatives=["<bad>"], guidance_mode="plain"),
        dict(negatives=["<bad>"], guidance_scale=1.0),  # CFG off: the negative acts through NAG
    ]
    for options in cases:
        got = run(pipe, "sd", **options)
        spelled = {k: spell(v) for k, v in options.items()}
        assert torch.equal(got, run(reference, "sd", **spelled)), options
        # the same words on the pipeline with the embedding: the file's rows, not the words, made the output
        assert (got - run(pipe, "sd", **spelled)).abs().max() > 1e-3 * got.abs().max(), options


def spell(value):
    """``value`` with the token "<bad>" written as the reference's two words."""
    if isinstance(value, str):
        return value.replace("<bad>", "ugly blurry")
    return [spell(v) for v in value] if isinstance(value, list) else value


def test_a1111_pt_embedding_loads_under_its_name(tmp_path):
    pipe = fresh("sd")
    rows = torch.randn(1, pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(2))
    torch.save({"string_to_param": {"*": rows}, "name": "bad-hands"}, tmp_path / "bad-hands.pt")
    pipe.load_textual_inversion(tmp_path / "bad-hands.pt")
    (token_id,) = pipe.tokenizer.convert_tokens_to_ids(["bad-hands"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], rows[0])
    pipe.unload_textual_inversion("bad-hands")
    assert "bad-hands" not in pipe.tokenizer.get_vocab()


def test_sdxl_embedding_with_clip_l_and_clip_g(tmp_path):
    pipe = fresh("sdxl")
    generator = torch.Generator().manual_seed(3)
    state = {
        "clip_l": torch.randn(2, pipe.text_encoder.config.hidden_size, generator=generator),
        "clip_g": torch.randn(2, pipe.text_encoder_2.config.hidden_size, generator=generator),
    }
    save_file(state, tmp_path / "bad_xl.safetensors")
    for source in (tmp_path / "bad_xl.safetensors", state):
        with pytest.raises(ValueError, match=r"clip_l, clip_g.*text_encoder=pipe\.text_encoder_2"):
            pipe.load_textual_inversion(source, token="<bad>")
    pipe.load_textual_inversion(
        state["clip_l"], token="<bad>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token="<bad>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    reference = fresh("sdxl")
    for encoder, tokenizer, key in (
        (reference.text_encoder, reference.tokenizer, "clip_l"),
        (reference.text_encoder_2, reference.tokenizer_2, "clip_g"),
    ):
        for word, row in zip(("ugly", "blurry"), state[key]):
            write_row(encoder, tokenizer, word, row)
    options = dict(negative_windows=[(0.25, 1.0)], negative_prompt="<bad>")
    got = run(pipe, "sdxl", negatives=["<bad>"], **options)
    spelled = dict(negative_windows=[(0.25, 1.0)], negative_prompt="ugly blurry")
    assert torch.equal(got, run(reference, "sdxl", negatives=["ugly blurry"], **spelled))
    assert (got - run(pipe, "sdxl", negatives=["ugly blurry"], **spelled)).abs().max() > 1e-3 * got.abs().max()


def test_flux_textual_inversion_reaches_the_clip_encoder(tmp_path):
    """Flux encodes ``prompt`` with CLIP (pooled) and ``prompt_2`` with T5; a token loaded into CLIP is the
    reference's words on CLIP with the token's text on T5 (diffusers' behaviour, forwarded unchanged)."""
    pipe = fresh("flux")
    rows = torch.randn(2, pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(4))
    save_file({"emb_params": rows}, tmp_path / "bad.safetensors")
    pipe.load_textual_inversion(str(tmp_path / "bad.safetensors"), token="<bad>")
    reference = fresh("flux")
    for word, row in zip(("ugly", "blurry"), rows):
        write_row(reference.text_encoder, reference.tokenizer, word, row)
    got = run(pipe, "flux", negative_prompt="<bad>")
    assert torch.equal(got, run(reference, "flux", negative_prompt="ugly blurry", negative_prompt_2="<bad>"))
    assert (got - run(pipe, "flux", negative_prompt="ugly blurry", negative_prompt_2="<bad>")).abs().max() > 0


# ----------------------------------------------------------------------------- CPU offload
SEQUENCE = {
    "sd": ["text_encoder", "unet", "vae"],
    "sdxl": ["text_encoder", "text_encoder_2", "unet", "vae"],
    "sd3": ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"],
    "flux": ["text_encoder", "text_encoder_2", "transformer", "vae"],
}


def test_model_cpu_offload_belongs_to_the_family_pipeline(family):
    """Offload needs an accelerator unless a device is given: device="cpu" runs diffusers' real hooks here."""
    options = dict(negatives=["red"], negative_windows=[(0.25, 1.0)])
    base = run(fresh(family), family, **options)
    pipe = fresh(family)
    pipe.enable_model_cpu_offload(device="cpu")
    inner = pipe.family_pipeline()
    by_id = {id(m): n for n, m in inner.components.items()}
    assert [by_id[id(hook.model)] for hook in inner._all_hooks] == SEQUENCE[family]  # the family's own order
    assert all(hasattr(getattr(pipe, name), "_hf_hook") for name in SEQUENCE[family])
    assert not getattr(pipe, "_all_hooks", None)  # nothing on the negguide pipeline itself
    first = inner._all_hooks[0]
    assert torch.equal(run(pipe, family, **options), base)
    assert inner._all_hooks and inner._all_hooks[0] is not first  # the call's maybe_free_model_hooks re-armed them

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # a new family pipeline ...
    rebuilt = pipe.family_pipeline()
    assert rebuilt is not inner and len(rebuilt._all_hooks) == len(SEQUENCE[family])  # ... keeps offload on
    pipe.remove_all_hooks()
    assert rebuilt._all_hooks == [] and not any(hasattr(getattr(pipe, n), "_hf_hook") for n in SEQUENCE[family])


def test_offload_on_the_negguide_pipeline_itself_would_not_re_arm():
    """Why the offload methods are forwarded: diffusers' own method on PerpNegPipeline puts the hooks where the
    family pipeline's maybe_free_model_hooks (the end of every call) does not see them."""
    pipe = fresh("sd")
    DiffusionPipeline.enable_model_cpu_offload(pipe, device="cpu")
    first = pipe._all_hooks[0]
    run(pipe, "sd")
    assert pipe._all_hooks[0] is first and not pipe.family_pipeline()._all_hooks


def test_sequential_cpu_offload_is_forwarded():
    pipe = fresh("sd")
    with mock.patch.object(type(pipe.family_pipeline()), "enable_sequential_cpu_offload") as spy:
        pipe.enable_sequential_cpu_offload(device="cpu")
    spy.assert_called_once_with(device="cpu")

    pipe.enable_sequential_cpu_offload(device="cpu")  # the real one: every submodule's weights wait on "meta"
    inner = pipe.family_pipeline()
    assert inner._offload_device == torch.device("cpu:0") and pipe._execution_device == torch.device("cpu:0")
    for name in ("text_encoder", "unet", "vae"):
        module = getattr(pipe, name)
        assert {p.device.type for p in module.parameters()} == {"meta"}
        assert all(hasattr(m, "_hf_hook") for m in module.modules() if list(m.parameters(recurse=False)))
        devices = {m._hf_hook.execution_device for m in module.modules() if hasattr(m, "_hf_hook")}
        assert torch.device("cpu:0") in devices and devices <= {torch.device("cpu:0"), None}
    # Running it needs an accelerator (accelerate's offload to "meta" fails on a CPU-only torch): negguide's call
    # does what the stock pipeline does, succeed with the same images or fail the same way
    stock = tiny_pipeline("sd")
    stock.enable_sequential_cpu_offload(device="cpu")
    outcomes = []
    for target in (pipe, fresh_from(stock)):
        try:
            outcomes.append(run(target, "sd", negatives=["red"]))
        except Exception as error:
            outcomes.append(type(error))
    if isinstance(outcomes[0], type):
        assert outcomes[0] is outcomes[1]
    else:
        assert torch.equal(*outcomes)


# ----------------------------------------------------------------------------- VAE tiling and slicing
def test_vae_tiling_and_slicing():
    pipe = fresh("sd")
    kwargs = dict(negatives=["red"], num_images_per_prompt=2, output_type="pt", height=64, width=64)
    base = pipe(PROMPT, **call_kwargs("sd", steps=2, **kwargs)).images
    pipe.enable_vae_slicing()
    assert pipe.vae.use_slicing
    with mock.patch.object(pipe.vae, "_decode", wraps=pipe.vae._decode) as decode:
        sliced = pipe(PROMPT, **call_kwargs("sd", steps=2, **kwargs)).images
    assert decode.call_count == 2  # one image at a time
    assert_close(sliced, base)
    pipe.disable_vae_slicing()
    pipe.enable_vae_tiling()
    assert pipe.vae.use_tiling and not pipe.vae.use_slicing
    with mock.patch.object(pipe.vae, "tiled_decode", wraps=pipe.vae.tiled_decode) as tiled:
        pipe(PROMPT, **call_kwargs("sd", steps=2, **kwargs))
    assert tiled.call_count == 1  # 32x32 latents are over the tiny VAE's 16-latent tile
    pipe.disable_vae_tiling()
    assert not pipe.vae.use_tiling


# ----------------------------------------------------------------------------- attention
def test_attention_backend_on_flux_and_slicing_on_sd():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    pipe = fresh("flux")
    options = dict(negatives=["red"])
    base = run(pipe, "flux", **options)
    active = _AttentionBackendRegistry._active_backend  # set_attention_backend also sets a process-wide default
    try:
        pipe.set_attention_backend("_native_math")
        processors = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]
        assert processors and all(p._attention_backend == "_native_math" for p in processors)
        assert_close(run(pipe, "flux", **options), base)
        pipe.reset_attention_backend()
        assert all(p._attention_backend is None for p in processors)
    finally:
        _AttentionBackendRegistry._active_backend = active
    with pytest.raises(ValueError, match="must be one of"):
        pipe.set_attention_backend("no-such-backend")

    sd = fresh("sd")  # diffusers' own pipeline method, on the shared modules
    base = run(sd, "sd", **options)
    sd.enable_attention_slicing(1)
    assert {type(p).__name__ for p in sd.unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    assert_close(run(sd, "sd", **options), base)


# ----------------------------------------------------------------------------- docs
def test_the_docs_example_runs_on_a_cpu(tmp_path, monkeypatch):
    page = (REPO / "docs" / "perp-neg.md").read_text()
    section = page.split("## LoRA, textual inversion, offload", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python([^\n]*)\n(.*?)^```", section, re.S | re.M)
    code = [body for title, body in blocks if "hub model (GPU)" not in title]
    assert len(code) == 1 and len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code[0], "docs/perp-neg.md", "exec"), {})
    assert out.getvalue().strip() == "(2, 32, 32, 3) False"
