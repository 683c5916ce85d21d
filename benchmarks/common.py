"""Shared benchmark helpers: a same-weights model pair and fair, interleaved timing."""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import workbench as wb
from workbench.io.load import load_pretrained


def smollm2_shaped_pair(device: str, dtype: torch.dtype, layers: int | None = None):
    """HF LlamaForCausalLM with SmolLM2-135M's shape (random weights) and the workbench model loaded from it."""
    import transformers

    cfg = wb.ModelConfig.preset("smollm2-135m")
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=layers or cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_pretrained(tmp, device=device, dtype=dtype)
    hf = hf.to(device=device, dtype=dtype)
    hf.config._attn_implementation = "sdpa"
    return ours, hf



def smollm2_hf_checkpoint(path: Path) -> Path:
    """`path`, holding SmolLM2 as an HF checkpoint: written from `workbench.models.smollm2()` unless it is there."""
    if not (path / "config.json").is_file():
        model, _ = wb.models.smollm2(dtype=torch.float32)
        wb.save_pretrained(model, path, format="hf")
    return path


def timer(device: str, clock: str = "wall") -> Callable[[Callable[[], object]], float]:
    """Seconds for one call: CUDA events on GPU; on CPU perf_counter, or process CPU time for clock="cpu"
    (steadier than wall time on a shared machine, and capture overhead is CPU work either way)."""

    def run(fn: Callable[[], object]) -> float:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000
        now = time.process_time if clock == "cpu" else time.perf_counter
        t0 = now()
        fn()
        return now() - t0

    return run


def interleaved_samples(
    fns: dict[str, Callable[[], object]], device: str, warmup: int, repeats: int, clock: str = "wall"
) -> dict[str, list[float]]:
    """Seconds per call for each function, `repeats` rounds. Every round calls each function once,
    starting one position later than the round before, so drift and order effects hit every side alike."""
    run = timer(device, clock)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(run(fns[name]))
    return samples


def interleaved_medians(
    fns: dict[str, Callable[[], object]], device: str, warmup: int, repeats: int, clock: str = "wall"
) -> dict[str, float]:
    """Median seconds per function over interleaved rounds (see interleaved_samples)."""
    samples = interleaved_samples(fns, device, warmup, repeats, clock)
    return {k: statistics.median(v) for k, v in samples.items()}


def paired_ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of t(name) / t(base) from the same round: a slow stretch of a shared
    machine then inflates both sides of each ratio instead of one side of a ratio of medians."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[base]))


def environment(device: str) -> str:
    import transformers

    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    return (
        f"device={device} ({name}), threads={torch.get_num_threads()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, python {platform.python_version()}"
    )


def cpu_run_args(doc: str | None) -> argparse.Namespace:
    """--threads (set on torch here) and --repeats, for the benchmarks that time whole runs on the CPU."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args
