"""The DiffusionNFT trainer on tiny models of an eps family (sd) and a flow family (sd3): what trains, what the old
policy and r = 0.5 do, resume, the saved LoRA, CFG > 1 rollouts, guards and bad input, and ``negguide train-nft``.

Each test builds its own tiny pipeline (the trainer puts adapters on the denoiser in place; conftest's shared
pipelines must stay untouched)."""

from __future__ import annotations

import inspect
import json
import warnings

import pytest
import torch

from negguide.nft import NFTConfig, NFTTrainer, TrainingDiverged, old_policy_decay
from negguide.nft.rollout import denoiser_inputs, predict, resolve_pipeline, rollout, sample_generators
from negguide.testing.tiny import tiny_pipeline

warnings.filterwarnings("ignore")
PROMPTS = ["a red circle", "a blue square", "a green triangle"]
FLOW_AND_EPS = ["sd", "sd3"]


def redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def constant(images, prompts):
    return torch.full((images.shape[0],), 0.7)


def config(**overrides) -> NFTConfig:
    settings = dict(
        prompts=PROMPTS,
        group_size=2,
        prompts_per_step=2,
        steps=2,
        num_inference_steps=2,
        lora_rank=4,
        lora_alpha=8.0,
        height=32,
        width=32,
        max_sequence_length=16,
        lr=1e-3,
        checkpoint_every=1,
    )
    return NFTConfig(**{**settings, **overrides})


def trainer(family: str, reward=redness, **overrides) -> NFTTrainer:
    return NFTTrainer(tiny_pipeline(family), reward, config(**overrides))


def flat_grad(t: NFTTrainer) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in t.policies.parameters()]
    )


def perturb(t: NFTTrainer, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.policies.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def current_output(t: NFTTrainer, pipe=None, family=None) -> torch.Tensor:
    """The denoiser's output at a fixed (x_t, t) for PROMPTS[:2]; on ``pipe`` (any LoRA state) or the trainer's
    current policy."""
    inner, fam = resolve_pipeline(pipe) if pipe is not None else (t.pipe, t.family)
    inputs = denoiser_inputs(inner, fam, PROMPTS[:2], 32, 32, t.pipeline_kwargs)
    x_t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    timestep = torch.tensor([500.0, 800.0]) if fam == "sd3" else torch.tensor([500, 800])
    denoiser = inner.unet if fam in ("sd", "sdxl") else inner.transformer
    with torch.no_grad():
        return predict(denoiser, fam, inputs, x_t, timestep)


# ----------------------------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("family", FLOW_AND_EPS)
def test_two_steps_change_every_lora_parameter_and_nothing_else(family):
    t = trainer(family, old_decay_rate=0.2, old_decay_max=0.3)
    pipe = t.pipe
    trainable = {n for n, p in t.denoiser.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and ".current." in n for n in trainable)
    base = {
        f"{c}.{n}": p.detach().clone()
        for c, m in pipe.components.items()
        if isinstance(m, torch.nn.Module)
        for n, p in m.named_parameters()
        if ".lora_" not in n
    }
    start = t.policies.state_dict("current")
    torch.testing.assert_close(t.policies.state_dict("old"), start, rtol=0, atol=0)  # old = current at the start
    for _ in range(2):
        old_before = t.policies.state_dict("old")
        t.train_step()
        current, old = t.policies.state_dict("current"), t.policies.state_dict("old")
        d = old_policy_decay(t.step, 0.2, 0.3)
        assert d == pytest.approx(min(0.2 * t.step, 0.3))
        for key in old:  # the old adapter moves by the EMA rule only
            torch.testing.assert_close(old[key], d * old_before[key] + (1 - d) * current[key], rtol=0, atol=1e-7)
    unchanged = [k for k in start if torch.equal(start[k], current[k])]
    assert not unchanged, f"{len(unchanged)} LoRA tensors did not train, e.g. {unchanged[:2]}"
    for name, tensor in base.items():
        module, _, param = name.partition(".")
        assert torch.equal(dict(pipe.components[module].named_parameters())[param], tensor), name
    assert [h["step"] for h in t.history] == [0, 1] and all(h["tied_fraction"] == 0 for h in t.history)


@pytest.mark.parametrize("family", FLOW_AND_EPS)
def test_r_one_half_leaves_only_the_pull_toward_the_old_policy(family):
    t = trainer(family, reward=constant, kl_weight=1e-2)
    perturb(t, 1)  # current = old != reference
    t.policies.copy_old_from_current()
    batch = t.collect(0)
    assert all(torch.equal(r, torch.full_like(r, 0.5)) for *_, r in batch.micro)  # tied groups: r = 0.5 exactly
    t.backward(batch, 0)
    with_kl = flat_grad(t)
    t.optimizer.zero_grad(set_to_none=True)
    t.config.kl_weight = 0.0
    stats = t.backward(batch, 0)
    policy_only = flat_grad(t)
    t.optimizer.zero_grad(set_to_none=True)
    assert with_kl.abs().max() > 1e-7  # the KL term pulls toward the reference...
    assert policy_only.abs().max() <= 1e-6 * with_kl.abs().max()  # ...and nothing else moves a policy equal to old
    assert stats["old_deviation"] == 0.0
    # current != old: at r = 0.5 the policy term pulls current toward old (its deviation shrinks along -grad)
    perturb(t, 2)
    deviations = []
    for _ in range(3):
        deviations.append(t.backward(batch, 0)["old_deviation"])
        grad = flat_grad(t)
        with torch.no_grad():
            for p in t.policies.parameters():
                p -= 0.02 * p.grad / grad.norm()
        t.optimizer.zero_grad(set_to_none=True)
    assert deviations[0] > deviations[1] > deviations[2] > 0, deviations


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_other_families_train_one_step(family):
    t = trainer(family, steps=1)
    start = t.policies.state_dict("current")
    entry = t.train(progress=False)[0]
    assert torch.isfinite(torch.tensor(entry["loss"])) and entry["grad_norm"] > 0
    assert any(not torch.equal(v, t.policies.state_dict("current")[k]) for k, v in start.items())


@pytest.mark.parametrize("family", FLOW_AND_EPS)
def test_bf16_mixed_precision_trains_with_float32_adapters(family):
    t = trainer(family, steps=1, mixed_precision="bf16")
    start = t.policies.state_dict("current")
    entry = t.train(progress=False)[0]
    assert torch.isfinite(torch.tensor(entry["loss"])) and entry["grad_norm"] > 0
    after = t.policies.state_dict("current")
    assert all(v.dtype == torch.float32 for v in after.values())  # autocast computes in bf16, weights stay fp32
    assert any(not torch.equal(v, after[k]) for k, v in start.items())
    # accelerate keeps one state per process: the next trainer still gets the precision it asks for
    from negguide.core.accelerate_setup import make_accelerator

    assert trainer(family, steps=1).accelerator.mixed_precision == "no"
    assert make_accelerator(mixed_precision="bf16").mixed_precision == "bf16"
    assert make_accelerator(mixed_precision="no").mixed_precision == "no"


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_training_forward_is_conditioned_like_the_pipeline(family):
    """predict() with the captured inputs at the pipeline's first (x_T, t) = the pipeline's own first forward."""
    pipe = tiny_pipeline(family)
    extra = {"max_sequence_length": 16} if family in ("sd3", "flux") else {}
    denoiser = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    seen, signature = [], inspect.signature(denoiser.forward)

    def keep(module, args, kwargs, output):
        bound = signature.bind_partial(*args, **kwargs).arguments
        seen.append((bound, (output[0] if isinstance(output, tuple) else output.sample).detach().clone()))

    handle = denoiser.register_forward_hook(keep, with_kwargs=True)
    cfg_off = {"true_cfg_scale" if family == "flux" else "guidance_scale": 1.0}  # Flux keeps its guidance embedding
    pipe(
        PROMPTS[:2],
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="latent",
        generator=sample_generators(0, 0, [0, 1]),
        **cfg_off,
        **extra,
    )
    handle.remove()
    kwargs, expected = seen[0]
    latent = kwargs.get("sample", kwargs.get("hidden_states"))
    level = kwargs["timestep"]  # the pipeline's: t (eps), sigma * 1000 (SD3), sigma (Flux)
    inputs = denoiser_inputs(pipe, family, PROMPTS[:2], 32, 32, extra)
    timestep = level if family != "sd3" else level.expand(2)
    if family in ("sd", "sdxl"):
        timestep = timestep.expand(2)
    torch.testing.assert_close(predict(denoiser, family, inputs, latent, timestep), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FLOW_AND_EPS)
def test_forward_process_noising(family):
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps at the denoiser's integer t (eps), (1 - s) x0 + s eps at t = 1000 s (flow);
    levels drawn in [timestep_min, timestep_max], eps ~ N(0, 1), both fixed by (seed, step, index)."""
    t = trainer(family, timestep_min=0.5, timestep_max=0.6)
    x0 = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    x_a, level, timestep, eps_a = t._noised(x0, 3, list(range(8)), 0)
    x_0, level_0, _, _ = t._noised(torch.zeros_like(x0), 3, list(range(8)), 0)
    torch.testing.assert_close(level, level_0)
    if family == "sd":
        assert timestep.dtype == torch.int64 and bool(((timestep >= 500) & (timestep < 600)).all())
        signal = t.pipe.scheduler.alphas_cumprod[timestep].sqrt()
        noise = (1 - t.pipe.scheduler.alphas_cumprod[timestep]).sqrt()
    else:
        assert bool(((timestep >= 500) & (timestep <= 600)).all())
        signal, noise = 1 - timestep / 1000, timestep / 1000
    torch.testing.assert_close(x_a - x_0, signal.view(-1, 1, 1, 1) * x0, rtol=1e-5, atol=1e-5)
    eps = x_0 / noise.view(-1, 1, 1, 1)
    torch.testing.assert_close(eps, eps_a, rtol=1e-4, atol=1e-4)  # the returned noise is the one used
    assert abs(float(eps.std()) - 1) < 0.05 and abs(float(eps.mean())) < 0.05
    assert len({round(float(v), 6) for v in timestep.float()}) == 8  # every sample its own level


def test_rollouts_come_from_the_old_policy():
    t = trainer("sd3")
    perturb(t, 5)  # current moves, old stays
    got = t.collect(0).micro[0][2]
    prompts = t.plan(0)
    kwargs = dict(num_inference_steps=2, height=32, width=32, policies=t.policies, pipeline_kwargs=t.pipeline_kwargs)
    old = rollout(t.pipe, "sd3", prompts, sample_generators(0, 0, range(4)), policy="old", **kwargs)
    current = rollout(t.pipe, "sd3", prompts, sample_generators(0, 0, range(4)), policy="current", **kwargs)
    torch.testing.assert_close(got, old.latents, rtol=0, atol=1e-6)
    assert (got - current.latents).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- resume and LoRA


@pytest.mark.parametrize("family", FLOW_AND_EPS)
def test_resume_equals_not_stopping(family, tmp_path):
    straight = trainer(family, steps=3, output_dir=str(tmp_path / "straight"))
    straight.train(progress=False)
    trainer(family, steps=2, output_dir=str(tmp_path / "resumed")).train(progress=False)
    resumed = trainer(family, steps=3, output_dir=str(tmp_path / "resumed"))
    assert resumed.step == 2 and len(resumed.history) == 2
    resumed.train(progress=False)
    for adapter in ("current", "old"):  # bit-exact: every random choice is a function of (seed, step, index)
        torch.testing.assert_close(
            resumed.policies.state_dict(adapter), straight.policies.state_dict(adapter), rtol=0, atol=0
        )
    torch.testing.assert_close(resumed.ema, straight.ema, rtol=0, atol=0)
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert resumed.history == straight.history
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["family"] == family


@pytest.mark.parametrize("family", FLOW_AND_EPS)
def test_saved_lora_loads_with_load_lora_weights_and_reproduces_current(family, tmp_path):
    out = tmp_path / "run"
    t = trainer(family, steps=1, output_dir=str(out))
    perturb(t, 4, 0.05)  # make the LoRA's effect large enough to see
    t.train(progress=False)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists() and (out / "lora_ema").is_dir()
    assert (out / "reward_curve.png").stat().st_size > 1000
    with t.policies.use("current"):
        mine = current_output(t)
    with t.policies.use("reference"):
        base = current_output(t)
    fresh = tiny_pipeline(family)
    assert torch.allclose(current_output(t, fresh), base, atol=1e-6)
    fresh.load_lora_weights(str(out / "lora"))
    loaded = current_output(t, fresh)
    assert (mine - base).abs().max() > 1e-3
    torch.testing.assert_close(loaded, mine, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- rollouts


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_cfg_rollouts_batch_g_samples_per_prompt(family):
    pipe = tiny_pipeline(family)
    prompts = ["a red circle"] * 3 + ["a blue square"] * 3  # G = 3 samples of each prompt
    extra = {"max_sequence_length": 16} if family != "sd" else {}
    common = dict(num_inference_steps=2, height=32, width=32, pipeline_kwargs=extra)
    out = rollout(pipe, family, prompts, sample_generators(0, 0, range(6)), guidance_scale=3.0, **common)
    assert out.images.shape == (6, 3, 32, 32) and out.latents.shape[0] == 6
    assert 0 <= float(out.images.min()) and float(out.images.max()) <= 1
    single = rollout(pipe, family, prompts[4:5], sample_generators(0, 0, [4]), guidance_scale=3.0, **common)
    # row 4 = its own run, up to float order (batch size and thread count change the kernels)
    torch.testing.assert_close(single.latents[0], out.latents[4], rtol=1e-3, atol=1e-4)
    free = rollout(pipe, family, prompts[4:5], sample_generators(0, 0, [4]), guidance_scale=1.0, **common)
    assert (free.latents - single.latents).abs().max() > 1e-4
    assert not torch.allclose(out.latents[3], out.latents[4])  # samples of one prompt differ


def test_cfg_rollouts_train():
    t = trainer("sd", guidance_scale=4.0, steps=1, group_size=3, prompts_per_step=2)
    assert t.train(progress=False)[0]["reward_std"] > 0


# ----------------------------------------------------------------------------------------------- guards and bad input


@pytest.fixture
def no_rollouts(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a rollout ran before the input was checked")

    monkeypatch.setattr("negguide.nft.trainer.rollout", refuse)


def picky(images, prompts):
    """A reward that knows circles only (as a ShapeWorld reward knows its own vocabulary)."""
    if any("circle" not in p for p in prompts):
        raise KeyError(f"cannot read {[p for p in prompts if 'circle' not in p][0]!r}")
    return redness(images, prompts)


def _unsupported_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: trainer("sd3", reward=lambda im, p: torch.zeros(len(p), 1)),
            r"reward '<lambda>' returned shape \(2, 1\)",
        ),
        (lambda: trainer("sd3", reward=lambda im, p: torch.full((len(p),), float("nan"))), "non-finite"),
        (lambda: trainer("sd3", group_size=1), r"group_size = 1 .*G must be >= 2"),
        (lambda: trainer("sd3", beta=0.0), r"beta = 0.0 is outside \(0.0, 1.0\]"),
        (lambda: trainer("sd3", beta=1.5), r"beta = 1.5 is outside"),
        (lambda: trainer("sd3", prompts=[]), "prompts must be a non-empty list"),
        (lambda: trainer("sd3", prompts_per_step=3, group_size=3, gradient_accumulation_steps=2), "do not split"),
        (lambda: NFTTrainer(object(), redness, config()), "diffusers text-to-image pipeline, got object"),
        (lambda: NFTTrainer(_unsupported_pipeline(), redness, config()), "cannot guide a pipeline with UNet2DModel"),
        (lambda: trainer("sd3", output_dir="/proc/x"), r"output folder '/proc/x' is not writable"),
        (lambda: trainer("sd3", height=33), r"height = 33 is not a multiple of"),
        (
            lambda: trainer("sd3", reward=picky, prompts=["a red circle", "a purple hexagon"]),
            "the reward cannot score the training prompts.*hexagon",
        ),
    ],
)
def test_bad_input_raises_before_any_rollout(make, match, no_rollouts):
    with pytest.raises(ValueError, match=match):
        make()


def test_reward_going_bad_mid_run_stops_before_the_update():
    calls = []

    def flaky(images, prompts):
        calls.append(1)
        return redness(images, prompts) * (float("nan") if len(calls) > 1 else 1.0)  # the probe passes

    t = trainer("sd3", reward=flaky)
    before = t.policies.state_dict("current")
    with pytest.raises(ValueError, match="reward 'flaky' returned non-finite values"):
        t.train_step()
    torch.testing.assert_close(t.policies.state_dict("current"), before, rtol=0, atol=0)
    assert t.step == 0


def test_non_finite_loss_stops_without_writing_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    t = trainer("sd3", steps=1, output_dir=str(out))
    t.train(progress=False)
    t.config.steps = 3
    with torch.no_grad():
        t.policies.parameters()[0].fill_(float("nan"))  # the current policy diverged
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 1"):
        t.train(progress=False)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 1
    assert not (out / "checkpoint.tmp").exists()


# ----------------------------------------------------------------------------------------------- positive-only objective


@pytest.mark.parametrize("family", FLOW_AND_EPS)
@pytest.mark.parametrize("objective", ["positive-only", "positive-only-x0"])
def test_positive_only_objective_trains_only_on_samples_above_their_prompt_mean(family, objective):
    t = trainer(family, objective=objective, kl_weight=0.0)
    batch = t.collect(0)
    t.backward(batch, 0)
    assert flat_grad(t).abs().sum() > 0
    t.optimizer.zero_grad(set_to_none=True)
    tied = [(i, p, x, torch.full_like(r, 0.5)) for i, p, x, r in batch.micro]  # every reward at its group mean
    t.backward(type(batch)(tied, batch.rewards, batch.prompts), 0)
    assert flat_grad(t).abs().sum() == 0
    with pytest.raises(ValueError, match="objective"):
        config(objective="grpo")


def test_positive_only_absolute_filter_drops_samples_below_the_reward_floor():
    t = trainer("sd3", objective="positive-only", kl_weight=0.0, keep_min_reward=float(10**9))
    batch = t.collect(0)
    assert all(float(r.abs().sum()) == 0 for *_, r in batch.micro)  # no sample reaches the floor
    t.backward(batch, 0)
    assert flat_grad(t).abs().sum() == 0
    loose = trainer("sd3", objective="positive-only", kl_weight=0.0, keep_min_reward=-float(10**9)).collect(0)
    torch.testing.assert_close(
        torch.cat([r for *_, r in loose.micro]),
        torch.cat([r for *_, r in trainer("sd3", objective="positive-only").collect(0).micro]),
    )
