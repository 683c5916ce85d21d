"""Forward throughput: workbench vs HF transformers (SDPA) on the same weights, same shapes, one run.

Run: .venv/bin/python benchmarks/forward.py [--repeats N]
Prints a table of median times and the ratio HF/ours (> 1 means the workbench is faster).
"""

from __future__ import annotations

import argparse

import torch
from common import environment, interleaved_medians, smollm2_shaped_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        shapes = [(1, 128), (4, 256)] + ([(8, 512), (4, 2048)] if device == "cuda" else [])
        ours, hf = smollm2_shaped_pair(device, dtype)
        print(f"\n{environment(device)}, dtype={dtype}, SmolLM2-135M shape (random weights)")
        print(f"{'shape':>8} | {'ours ms':>9} | {'HF ms':>9} | {'HF/ours':>7}")
        for b, t in shapes:
            ids = torch.randint(0, ours.config.vocab_size, (b, t), device=device)
            with torch.inference_mode():
                med = interleaved_medians(
                    {"ours": lambda ids=ids, m=ours: m(ids), "hf": lambda ids=ids, m=hf: m(input_ids=ids).logits},
                    device,
                    warmup=2,
                    repeats=args.repeats,
                )
            print(f"{b}x{t:>6} | {med['ours'] * 1e3:9.1f} | {med['hf'] * 1e3:9.1f} | {med['hf'] / med['ours']:7.2f}")


if __name__ == "__main__":
    main()
