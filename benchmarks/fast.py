"""Issue 8 in one command: forward and decode speed of the workbench vs HF transformers, as ratios.

Run: .venv/bin/python benchmarks/fast.py [--compile | --no-compile] [--overhead] [--device cuda|cpu]

Both models hold the same random weights of SmolLM2-135M's shape (`common.smollm2_shaped_pair`).
- Forward: ours eager, ours `compile_model` (inductor), HF SDPA. CUDA: bf16 at 1x128, 8x512, 4x2048,
  compiled on by default. CPU: fp32 at 1x128 and 4x256, compiled only with --compile.
- Decode at batch 1 (tokens/s): HF generate with the dynamic and the static cache, `generate` with
  fast=False (plain forward) and fast=True (fixed-shape step: a CUDA graph on CUDA, eager on the
  CPU), and `GenerationSession` (per-step records with cache statistics) plain and fast; with
  compilation on, also fast="compile" for both (the inductor-compiled step, in the graph on CUDA).
  generate rates are B*(N-2)/(t(N) - t(2)): subtracting a two-token call removes the prefill, the
  per-call set-up and the one-off CUDA graph capture, leaving steady-state decode. Session rates are
  N/t(reset + N steps); its graph is captured once, during warm-up.
- --overhead: also runs benchmarks/overhead.py (capture overhead) as a subprocess.
Times are medians of interleaved runs after warm-up (CUDA events on GPU). A ratio > 1 favours ours.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from common import environment, interleaved_medians, smollm2_shaped_pair

from workbench.generation import GenerationSession, generate
from workbench.model import decoder
from workbench.model.compile import compile_model
from workbench.model.decoder import CARRIERS

HERE = Path(__file__).resolve().parent


class IdTokenizer:
    """Random weights have no tokenizer: token i reads as "<i>" (the session decodes every candidate)."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids) -> str:
        return "".join(f"<{int(i)}>" for i in ids)


def forward_table(ours, hf, device: str, shapes, compiled: bool, args) -> None:
    wrapper = compile_model(ours, mode=args.compile_mode, dynamic=False) if compiled else None
    print(f"\nForward, median of {args.repeats} (ms); ratio = HF time / our time")
    print(f"{'shape':>8} | {'ours':>8} | {'compiled':>8} | {'HF sdpa':>8} | {'HF/ours':>7} | {'HF/compiled':>11}")
    for b, t in shapes:
        ids = torch.randint(0, ours.config.vocab_size, (b, t), device=device)
        fns = {"ours": lambda ids=ids: ours(ids), "hf": lambda ids=ids: hf(input_ids=ids).logits}
        if wrapper is not None:
            fns["compiled"] = lambda ids=ids: wrapper(ids)
        with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
            med = interleaved_medians(fns, device, warmup=args.warmup + (2 if compiled else 0), repeats=args.repeats)
        for w in caught:
            print(f"  warning: {w.message}")
        comp = med.get("compiled") if wrapper is not None and wrapper.compiled else None
        cms, cratio = (f"{comp * 1e3:8.2f}", f"{med['hf'] / comp:11.2f}") if comp else (f"{'-':>8}", f"{'-':>11}")
        print(
            f"{b}x{t:<6} | {med['ours'] * 1e3:8.2f} | {cms} | {med['hf'] * 1e3:8.2f} | "
            f"{med['hf'] / med['ours']:7.2f} | {cratio}"
        )
    if wrapper is not None and not wrapper.compiled:
        print(f"  compiled forward unavailable, fell back to eager: {wrapper.error!r}")


def decode_rates(ours, hf, device: str, args, compiled: bool) -> dict[str, float]:
    n, prompt = args.new_tokens, args.prompt
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ours.config.vocab_size, (1, prompt), generator=g).to(device)
    mask = torch.ones_like(ids)

    def runs(k: int) -> dict[str, object]:
        def hf_run(**extra):
            return lambda: hf.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                pad_token_id=0, **extra,
            )  # fmt: skip

        return {
            "HF dynamic": hf_run(),
            "HF static": hf_run(cache_implementation="static"),
            "ours plain": lambda: generate(ours, ids, max_new_tokens=k, fast=False),
            "ours fast": lambda: generate(ours, ids, max_new_tokens=k, fast=True),
            **({"ours compiled": lambda: generate(ours, ids, max_new_tokens=k, fast="compile")} if compiled else {}),
        }

    with torch.inference_mode():
        full = interleaved_medians(runs(n), device, args.warmup, args.repeats)
        two = interleaved_medians(runs(2), device, args.warmup, args.repeats)
    rates = {k: (n - 2) / max(full[k] - two[k], 1e-9) for k in full}
    tok = IdTokenizer()
    sessions = {
        name: GenerationSession(ours, tok, ids[0], fast=fast, reserve=n + 8, eos_token_id=None)
        for name, fast in (("session plain", False), ("session fast", True), ("session compiled", "compile"))
        if compiled or fast != "compile"
    }
    fns = {name: (lambda s=s: (s.reset(), s.run(n))) for name, s in sessions.items()}
    with torch.inference_mode():
        med = interleaved_medians(fns, device, args.warmup, args.repeats)
    rates.update({k: n / v for k, v in med.items()})
    last = sessions["session fast"].history[-1]
    print(f"  (session records carry cache statistics: e.g. last step {last.cache_total_used:,} B used)")
    return rates


def decode_table(ours, hf, device: str, args, compiled: bool) -> None:
    what = "CUDA graph" if device == "cuda" else "eager fixed-shape step"
    print(f"\nDecode at batch 1, prompt {args.prompt}, {args.new_tokens} new tokens (tokens/s); fast = {what}"
          + ("; compiled = torch.compile'd step" + (" in the graph" if device == "cuda" else "") if compiled else ""))
    with warnings.catch_warnings(record=True) as caught:
        rates = decode_rates(ours, hf, device, args, compiled)
    for w in caught:
        if "compiled decode step" in str(w.message):
            print(f"  warning: {w.message}")
    static = rates["HF static"]
    print(f"{'path':>16} | {'tok/s':>9} | {'ours/HF static':>14}")
    for name, rate in rates.items():
        print(f"{name:>16} | {rate:9.1f} | {rate / static:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the compiled forward (default: on for CUDA, off for the CPU)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 on CUDA, 5 on the CPU")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 128 on CUDA, 16 on the CPU")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick smoke run")
    parser.add_argument("--overhead", action="store_true", help="also run benchmarks/overhead.py")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--carrier", choices=CARRIERS, default=None,
                        help="who captures CUDA graphs of the decode step (default: the library's)")
    args = parser.parse_args()  # fmt: skip
    cuda = args.device == "cuda"
    if args.carrier is not None:
        decoder.DEFAULT_CARRIER = args.carrier  # read by every FastDecoder that generate() makes
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (20 if cuda else 5)
    args.new_tokens = args.new_tokens or (128 if cuda else 16)
    compiled = cuda if args.compile is None else args.compile
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = [(1, 128), (8, 512), (4, 2048)] if cuda else [(1, 128), (4, 256)]
    ours, hf = smollm2_shaped_pair(args.device, dtype, args.layers)
    layers = f", {args.layers} layers only" if args.layers else ""
    print(f"{environment(args.device)}, dtype={dtype}, SmolLM2-135M shape (random weights{layers}), "
          f"CUDA graph carrier {decoder.DEFAULT_CARRIER!r}")
    if not args.skip_forward:
        forward_table(ours, hf, args.device, shapes, compiled, args)
    if not args.skip_decode:
        decode_table(ours, hf, args.device, args, compiled)
    if args.overhead:
        del ours, hf
        cmd = [sys.executable, str(HERE / "overhead.py"), "--device", args.device]
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
