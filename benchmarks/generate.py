"""Decode throughput: `workbench.generate` vs HF `generate` (dynamic and static cache), same weights.

Run: .venv/bin/python benchmarks/generate.py [--new-tokens N] [--prompt P] [--repeats R] [--weights real|random]

Decode tokens/s = B * (N - 1) / (t(N new tokens) - t(1 new token)): subtracting a one-token run
removes the prefill, so only the per-token decode loop is measured. Every side generates exactly N
tokens (EOS is ignored: no eos for the workbench, min_new_tokens=N for HF). Times are medians of
interleaved runs after warm-up (CUDA events on GPU). A ratio > 1 means the workbench is faster.
"""

from __future__ import annotations

import argparse

import torch
from common import environment, interleaved_medians, smollm2_shaped_pair

from workbench.generation import generate


def load_pair(device: str, dtype: torch.dtype, weights: str):
    """(workbench model, HF model) holding the same weights: the real SmolLM2 GGUF, or random ones."""
    if weights == "random":
        return smollm2_shaped_pair(device, dtype)
    from transformers import AutoModelForCausalLM

    from workbench.models import smollm2, smollm2_path

    path = smollm2_path()
    ours, _ = smollm2(device=device, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf = hf.to(device=device, dtype=dtype).eval()
    hf.config._attn_implementation = "sdpa"
    return ours, hf


def runners(ours, hf, ids: torch.Tensor, n: int) -> dict[str, object]:
    mask = torch.ones_like(ids)

    def hf_run(cache: str):
        extra = {"cache_implementation": "static"} if cache == "static" else {}
        return lambda: hf.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=0, **extra,
        )  # fmt: skip

    return {
        "ours": lambda: generate(ours, ids, max_new_tokens=n),
        "ours_growing": lambda: generate(ours, ids, max_new_tokens=n, cache_mode="growing"),
        "hf_dynamic": hf_run("dynamic"),
        "hf_static": hf_run("static"),
    }


def decode_rates(ours, hf, batch: int, args, device: str) -> dict[str, float]:
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, ours.config.vocab_size, (batch, args.prompt), generator=g).to(device)
    with torch.inference_mode():
        full = interleaved_medians(runners(ours, hf, ids, args.new_tokens), device, args.warmup, args.repeats)
        one = interleaved_medians(runners(ours, hf, ids, 1), device, args.warmup, args.repeats)
    return {k: batch * (args.new_tokens - 1) / max(full[k] - one[k], 1e-9) for k in full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--weights", choices=("real", "random"), default="real")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        ours, hf = load_pair(device, dtype, args.weights)
        print(f"\n{environment(device)}, dtype={dtype}, SmolLM2-135M ({args.weights} weights)")
        print(f"prompt {args.prompt} tokens, {args.new_tokens} new tokens, median of {args.repeats}; decode tokens/s")
        head = f"{'batch':>5} | {'ours':>8} | {'ours grow':>9} | {'HF dyn':>8} | {'HF static':>9} | "
        print(head + f"{'ours/HF dyn':>11} | {'ours/HF static':>14}")
        for batch in args.batches:
            r = decode_rates(ours, hf, batch, args, device)
            print(
                f"{batch:>5} | {r['ours']:8.1f} | {r['ours_growing']:9.1f} | {r['hf_dynamic']:8.1f} | "
                f"{r['hf_static']:9.1f} | {r['ours'] / r['hf_dynamic']:11.2f} | {r['ours'] / r['hf_static']:14.2f}"
            )
        del ours, hf


if __name__ == "__main__":
    main()
