"""Small helpers the trainers share: an early writability check, per-step curves saved as PNG and their summary
(the cosine learning-rate schedule lives in :mod:`negguide.core.settings`, with the configs that use it)."""

from __future__ import annotations

import os
import tempfile

from negguide.core.settings import cosine_learning_rate  # noqa: F401  (its home moved; kept importable here)


def check_writable(folder: str) -> None:
    """Create ``folder`` and write a probe file in it; a ValueError naming the folder if that fails. The probe has
    a unique name, so the processes of one accelerate run may check the same folder at once."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".write_test") as probe:
            probe.write("ok")
    except OSError as error:
        raise ValueError(f"output folder {folder!r} is not writable ({error.strerror}); choose another") from None


def running_mean(values: list, window: int) -> list:
    """The mean of each value and up to ``window - 1`` values before it."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(values))]


def save_curve(history: list, key: str, path: str, title: str = "training") -> str | None:
    """A PNG of ``history[i][key]`` per step with its running mean; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps, values = [h["step"] for h in history if key in h], [h[key] for h in history if key in h]
    window = max(1, len(values) // 20)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, alpha=0.35, label=f"{key} (step mean)")
    ax.plot(steps, running_mean(values, window), label=f"running mean ({window})")
    ax.set(xlabel="step", ylabel=key, title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def first_last_means(history: list, key: str) -> tuple:
    """(mean of ``key`` over the first tenth of ``history``'s rows, over the last tenth, rows per tenth): one step's
    value is one noisy batch, so a run's summary compares tenths, not its first and last steps."""
    if not history:
        raise ValueError("first_last_means needs at least one history row")
    n = max(1, len(history) // 10)
    mean = lambda rows: sum(float(row[key]) for row in rows) / len(rows)  # noqa: E731
    return mean(history[:n]), mean(history[-n:]), n
