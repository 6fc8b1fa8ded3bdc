"""ReNeg's per-sample variant: a global negative embedding tuned a few more steps for one prompt, and a folder of
them for a prompt list (``negguide train-reneg --per-sample-from GLOBAL``), resumed prompt by prompt.

    from negguide.reneg import load_per_sample
    tuned = load_per_sample("runs/per-sample/per_sample", pipe)          # {prompt: NegativeEmbedding}
    image = pipe(prompt, **tuned[prompt].negative_kwargs()).images[0]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace

from negguide.reneg.config import SELECTIONS, ReNegConfig
from negguide.reneg.embedding import NegativeEmbedding
from negguide.reneg.trainer import ReNegTrainer

INDEX = "prompts.json"


def per_sample_embedding(
    pipe,
    reward,
    global_embedding: NegativeEmbedding,
    prompt: str,
    config: ReNegConfig,
    patience: int = 3,
    selection: str = "final",
    confirm_samples: int = 0,
) -> NegativeEmbedding:
    """ReNeg's per-sample variant: a few more steps from the global embedding on one prompt (the paper: at most
    ``config.steps`` = 10), keeping the best and stopping after ``patience`` steps without improvement.

    ``selection`` is what "best" is measured on: "final" (default) the mean reward of ``config.batch_size``
    complete samples of the prompt with fixed noise (what the embedding is for), "step" the training objective
    on step 0's plan (one denoiser step from a random late step: cheaper, noisier).

    ``confirm_samples`` > 0 guards against the winner's curse of picking the best of up to ``config.steps`` noisy
    scores: the winner is compared with the global embedding once more on that many complete samples with fresh
    noise (the same noise for both) and kept only if it wins there too; otherwise the global embedding is returned."""
    if patience < 1:
        raise ValueError(f"patience = {patience} must be >= 1")
    if selection not in SELECTIONS:
        raise ValueError(f"selection = {selection!r} must be 'final' or 'step'")
    if isinstance(confirm_samples, bool) or not isinstance(confirm_samples, int) or confirm_samples < 0:
        raise ValueError(f"confirm_samples = {confirm_samples!r} must be an integer >= 0 (0: no confirmation)")
    config = replace(config, prompts=[prompt], output_dir=None, warmup_steps=0)
    trainer = ReNegTrainer(pipe, reward, config, init=global_embedding)
    score = (
        (lambda: trainer.final_reward([prompt] * config.batch_size))
        if selection == "final"
        else (lambda: trainer.evaluate(0))
    )
    best = _copy(global_embedding)
    best_reward, since = score(), 0
    while trainer.step < config.steps and since < patience:
        trainer.train_step()
        value = score()
        if value > best_reward:
            best_reward, best, since = value, trainer.embedding(), 0
        else:
            since += 1
    if confirm_samples and trainer.step:
        scores = []
        for candidate in (global_embedding, best):
            trainer.load_embedding(candidate)
            scores.append(trainer.final_reward([prompt] * confirm_samples, seed=1))  # noise unseen by the selection
        if scores[1] <= scores[0]:
            best = _copy(global_embedding)
        best.metadata["per_sample_confirmation"] = (
            f"global {scores[0]:.6f}, tuned {scores[1]:.6f} on {confirm_samples} "
            f"fresh samples: kept {'tuned' if scores[1] > scores[0] else 'global'}"
        )
    best.metadata["per_sample_prompt"] = prompt
    best.metadata["per_sample_reward"] = f"{best_reward:.6f} ({selection})"
    return best


def fit_per_sample(
    pipe,
    reward,
    global_embedding: NegativeEmbedding,
    config: ReNegConfig,
    folder: str,
    progress: bool = True,
    **options,
) -> dict:
    """``per_sample_embedding`` (with ``options``: patience, selection, confirm_samples) for every prompt of
    ``config.prompts``, each saved in ``folder`` as soon as it is done, with ``prompts.json`` mapping prompt -> file.

    A file is named by a hash of its prompt, the global embedding's tensors and the tuning settings, and records all
    three: a rerun reuses a prompt's tuning only if it was made from the same global embedding with the same
    settings (so an interrupted run loses at most the prompt it was on), and a rerun with other prompts, another
    global embedding or other settings in the same folder never maps a prompt to another prompt's embedding.
    Returns {prompt: NegativeEmbedding}."""
    from tqdm.auto import tqdm

    global_embedding.check_compatible(pipe)
    os.makedirs(folder, exist_ok=True)
    index_path = os.path.join(folder, INDEX)
    index = _read_index(index_path) if os.path.isfile(index_path) else {}
    source = {"global": fingerprint(global_embedding), "settings": _settings_fingerprint(config, options)}
    tuned = {}
    for prompt in tqdm(config.prompts, desc="per-sample", disable=not progress):
        name = _file_name(prompt, source)
        path = os.path.join(folder, name)
        if index.get(prompt) == name and os.path.isfile(path):
            embedding = NegativeEmbedding.load(path, pipe)
            if _made_for(embedding) == (prompt, source["global"], source["settings"]):
                tuned[prompt] = embedding
                continue
        embedding = per_sample_embedding(pipe, reward, global_embedding, prompt, config, **options)
        embedding.metadata.update(per_sample_global=source["global"], per_sample_settings=source["settings"])
        embedding.save(path + ".tmp")
        os.replace(path + ".tmp", path)  # a file is complete or absent
        tuned[prompt] = embedding
        index[prompt] = name
        with open(index_path + ".tmp", "w") as f:
            json.dump(index, f, indent=1)
        os.replace(index_path + ".tmp", index_path)  # never a half-written index
    return tuned


def load_per_sample(folder: str, pipe=None) -> dict:
    """{prompt: NegativeEmbedding} from a folder written by ``fit_per_sample``; with ``pipe``, each is checked
    against that model. Every file must have been tuned for the prompt the index gives it (ValueError otherwise)."""
    index_path = os.path.join(folder, INDEX)
    if not os.path.isfile(index_path):
        raise ValueError(
            f"{folder!r} has no {INDEX}: not a per-sample folder (write one with "
            "negguide train-reneg --per-sample-from GLOBAL)"
        )
    out = {}
    for prompt, name in _read_index(index_path).items():
        embedding = NegativeEmbedding.load(os.path.join(folder, name), pipe)
        made_for = embedding.metadata.get("per_sample_prompt")
        if made_for != prompt:
            raise ValueError(
                f"{os.path.join(folder, name)} was tuned for {made_for!r}, but {INDEX} gives it to {prompt!r}: the "
                "folder is inconsistent; rerun the per-sample tuning into an empty folder"
            )
        out[prompt] = embedding
    return out


def fingerprint(embedding: NegativeEmbedding) -> str:
    """A short hash of an embedding's family and tensors (names, shapes and float32 bytes)."""
    digest = hashlib.sha256(embedding.family.encode())
    for name in sorted(embedding.tensors):
        tensor = embedding.tensors[name].detach().float().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def _settings_fingerprint(config: ReNegConfig, options: dict) -> str:
    """A short hash of the settings a tuning depends on (the config without its prompt list and output folder)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("prompts", "output_dir")}
    text = json.dumps({"config": settings, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_name(prompt: str, source: dict) -> str:
    key = json.dumps([prompt, source["global"], source["settings"]])
    return hashlib.sha256(key.encode()).hexdigest()[:20] + ".safetensors"


def _made_for(embedding: NegativeEmbedding) -> tuple:
    meta = embedding.metadata
    return meta.get("per_sample_prompt"), meta.get("per_sample_global"), meta.get("per_sample_settings")


def _copy(embedding: NegativeEmbedding) -> NegativeEmbedding:
    """A new NegativeEmbedding sharing the tensors (never modified in place) with its own metadata dict."""
    return NegativeEmbedding(embedding.family, dict(embedding.tensors), dict(embedding.metadata))


def _read_index(path: str) -> dict:
    with open(path) as f:
        index = json.load(f)
    if not isinstance(index, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in index.items()):
        raise ValueError(f"{path} must map prompts to file names")
    return index
