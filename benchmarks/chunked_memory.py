"""Peak memory and time of ``max_rows_per_forward`` (the K + 2 branch rows of a step run in chunks) against the single
batched forward, measured in one run on the same model, configurations interleaved round-robin.

Memory is the peak growth during the denoising loop (from the denoiser's first forward to the end of the call; text
encoding excluded, weights excluded): on CUDA ``torch.cuda.max_memory_allocated`` above ``memory_allocated`` at the
first forward; on CPU the growth of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs after
``malloc_trim`` hands freed heap back, so one process can measure every configuration; ``ru_maxrss`` cannot be reset
and is not used). Time is per denoising step from callback timestamps (the first step excluded), median over steps
and repeats. Nothing is asserted.

    python benchmarks/chunked_memory.py --size 256 --negatives 2 4 --caps 2 1 --repeats 2
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perp_neg_speed import sd15_random_pipeline  # noqa: E402

from negguide import PerpNegPipeline  # noqa: E402

WORDS = ["red", "circle", "blue", "square", "green", "triangle", "yellow", "shape"]


class PeakMemory:
    """Peak growth (MiB) of allocated memory from the denoiser's first forward of a call to the end of the call."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.how = "cuda max_memory_allocated" if self.cuda else "VmHWM growth (malloc_trim + clear_refs)"
        self.base = None
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None

    @staticmethod
    def _status(field: str) -> int:  # KiB
        return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0])

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        self.base = self._status("VmRSS") * 1024

    def peak_mib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (self._status("VmHWM") * 1024 - self.base) / 2**20


def run(pipe, memory: PeakMemory, size: int, steps: int, k: int, cap) -> tuple:
    """(step times in s, peak MiB) of one call."""
    denoiser = pipe.unet
    stamps: list[float] = []
    first = [True]

    def at_first_forward(module, args):
        if first[0]:
            first[0] = False
            memory.reset()

    def stamp(p, i, t, kw):
        if memory.cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return kw

    handle = denoiser.register_forward_pre_hook(at_first_forward, prepend=True)
    try:
        pipe(
            "a red shape",
            negatives=WORDS[:k],
            num_inference_steps=steps,
            height=size,
            width=size,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=stamp,
            max_rows_per_forward=cap,
        )
    finally:
        handle.remove()
    return [b - a for a, b in zip(stamps, stamps[1:])], memory.peak_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="pixels (256-512 on a CPU)")
    parser.add_argument("--negatives", type=int, nargs="+", default=[2, 4], help="K: rows per step are K + 2")
    parser.add_argument("--caps", type=int, nargs="+", default=[2, 1], help="max_rows_per_forward values to compare")
    parser.add_argument("--steps", type=int, default=2, help="steps per call (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = PerpNegPipeline.from_pipe(sd15_random_pipeline().to(device))
    pipe.set_progress_bar_config(disable=True)
    memory = PeakMemory(device)
    configs = [(size, k, cap) for size in args.size for k in args.negatives for cap in [None, *args.caps]]
    times: dict = {c: [] for c in configs}
    peaks: dict = {c: [] for c in configs}
    with torch.inference_mode():
        run(pipe, memory, min(args.size), 2, 1, None)  # warm-up
        for _ in range(args.repeats):
            for config in configs:  # round-robin
                step, peak = run(pipe, memory, config[0], args.steps, config[1], config[2])
                times[config] += step
                peaks[config].append(peak)
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, memory: {memory.how}")
    print(
        "| px | K | rows/step | max_rows_per_forward | forwards/step | peak MiB | peak vs batched | s/step | time vs batched |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size, k, cap in configs:
        base = (size, k, None)
        rows = k + 2
        peak, t = statistics.median(peaks[(size, k, cap)]), statistics.median(times[(size, k, cap)])
        peak0, t0 = statistics.median(peaks[base]), statistics.median(times[base])
        print(
            f"| {size} | {k} | {rows} | {cap if cap else 'None (batched)'} | {-(-rows // cap) if cap else 1} | "
            f"{peak:.0f} | {peak / peak0:.2f} | {t:.2f} | {t / t0:.2f} |"
        )


if __name__ == "__main__":
    main()
