"""An edit's cost per edited module, against the trace's cost per recorded module, in one process.

Run: python benchmarks/edits.py [--threads 2] [--repeats 15] [--layers N]

A SmolLM2-shaped random workbench model (the 135M shapes, `--layers` blocks) and the same shapes as HF's
`LlamaForCausalLM`, float32 on the CPU, one forward of (1, 64) tokens under `torch.no_grad()`. Rounds
interleave the plain forward with:
- an edit of every block's output that changes nothing (`wb.Scale(block, 1.0)`), and one of every block's
  attention heads (`wb.ZeroHead` on head 0 of every layer): the interception layer's per-module path;
- `wb.trace` with its defaults restricted to the blocks (`modules=` the block names), and with every module.
Each row is the median over rounds of (t(method) - t(plain)) / (modules touched), in microseconds, with the
ratio t(method) / t(plain) beside it. Target (issue 29): an edit's per-module cost is no more than the trace's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, interleaved_samples  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.lm import ModelAdapter  # noqa: E402
from workbench.lm.heads import attention_layers  # noqa: E402


def models(layers: int) -> dict[str, torch.nn.Module]:
    import transformers

    config = wb.ModelConfig.preset("smollm2-135m").replace(n_layers=layers)
    torch.manual_seed(0)
    ours = wb.TransformerLM(config).eval()
    hf_config = transformers.LlamaConfig(
        hidden_size=config.d_model, intermediate_size=config.d_ff, num_hidden_layers=layers,
        num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads, vocab_size=config.vocab_size,
        max_position_embeddings=config.max_seq_len, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    return {"workbench TransformerLM": ours, "HF LlamaForCausalLM": hf}


def methods(model: torch.nn.Module, ids: torch.Tensor) -> tuple[dict[str, Callable[[], object]], dict[str, int]]:
    adapter = ModelAdapter(model)
    found = adapter.blocks()
    assert found is not None
    blocks = [name for name, _ in found[1]]
    heads = attention_layers(model)
    n_modules = sum(1 for _ in model.modules())

    def plain() -> object:
        return model(ids)

    def edit_blocks() -> object:
        with wb.edit(model, *(wb.Scale(name, 1.0) for name in blocks)):
            return model(ids)

    def edit_heads() -> object:
        with wb.edit(model, *(wb.ZeroHead(layer.layer, 0) for layer in heads)):
            return model(ids)

    def trace_blocks() -> object:
        with wb.trace(model, modules=blocks):
            return model(ids)

    def trace_all() -> object:
        with wb.trace(model):
            return model(ids)

    fns = {"plain": plain, "edit: every block's output": edit_blocks, "edit: one head in every layer": edit_heads,
           "trace: the blocks": trace_blocks, "trace: every module": trace_all}
    touched = {"edit: every block's output": len(blocks), "edit: one head in every layer": len(heads),
               "trace: the blocks": len(blocks), "trace: every module": n_modules}
    return fns, touched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
    print(environment("cpu"))
    for label, model in models(args.layers).items():
        fns, touched = methods(model, ids)
        with torch.no_grad():
            samples = interleaved_samples(fns, "cpu", warmup=2, repeats=args.repeats)
        plain = statistics.median(samples["plain"])
        print(f"\n{label}, {args.layers} layers, ids (1, 64): plain forward {plain * 1e3:.1f} ms "
              f"(median of {args.repeats})")
        print("| method | modules | us per module | ratio to plain |")
        print("|---|---|---|---|")
        for name, n in touched.items():
            extra = statistics.median((a - b) / n for a, b in zip(samples[name], samples["plain"], strict=True))
            ratio = statistics.median(a / b for a, b in zip(samples[name], samples["plain"], strict=True))
            print(f"| {name} | {n} | {extra * 1e6:.0f} | {ratio:.3f}x |")


if __name__ == "__main__":
    main()
