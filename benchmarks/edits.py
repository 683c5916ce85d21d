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

A whole forward's spread between rounds (milliseconds) is as large as 30 modules' edits, so a second table
isolates one module: the middle block's output projection called `--calls` times on the input it had in the
forward (a head edit rewrites that input), and the middle block itself on its own arguments (an output edit),
each plain, edited and traced (`wb.trace(modules=` that module `)`), inside one open context. Each row is the
median over rounds of (t(method) - t(plain)) / calls.
"""

from __future__ import annotations

import argparse
import contextlib
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


class Isolated:
    """The middle block and its output projection of `model`, each called alone on the inputs they had in one
    forward of `ids`, plain, edited and traced."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, calls: int) -> None:
        self.model, self.calls = model, calls
        heads = attention_layers(model)
        self.layer = heads[len(heads) // 2]
        self.block, self.proj = model.get_submodule(self.layer.block), model.get_submodule(self.layer.projection)
        seen: dict[str, tuple] = {}
        grab = [self.block.register_forward_pre_hook(lambda _m, a, k: seen.setdefault("block", (a, k)),
                                                     with_kwargs=True),
                self.proj.register_forward_pre_hook(lambda _m, a, k: seen.setdefault("proj", (a, k)),
                                                    with_kwargs=True)]
        try:
            with torch.no_grad():
                model(ids) if isinstance(model, wb.TransformerLM) else model(ids, use_cache=False)
        finally:
            for h in grab:
                h.remove()
        self.inputs = seen
        args, kwargs = seen["proj"]
        with torch.no_grad(), wb.edit(model, wb.ZeroHead(self.layer.layer, 0)):
            edited = self.proj(*args, **kwargs)
        if torch.equal(edited, self.proj(*args, **kwargs)):
            raise RuntimeError("the head edit did not reach the projection called alone")

    def loop(self, what: str, context: Callable[[], contextlib.AbstractContextManager] | None = None
             ) -> Callable[[], object]:
        """`calls` calls of the block or the projection, inside one `context` (none: plain)."""
        module = self.block if what == "block" else self.proj
        args, kwargs = self.inputs[what]

        def run() -> object:
            with context() if context is not None else contextlib.nullcontext():
                out = None
                for _ in range(self.calls):
                    out = module(*args, **kwargs)
                return out

        return run

    def methods(self) -> dict[str, Callable[[], object]]:
        head, block, proj = wb.ZeroHead(self.layer.layer, 0), self.layer.block, self.layer.projection
        return {
            "plain: projection": self.loop("proj"),
            "edit: one head (ZeroHead), projection": self.loop("proj", lambda: wb.edit(self.model, head)),
            "trace: the projection": self.loop("proj", lambda: wb.trace(self.model, modules=[proj])),
            "plain: block": self.loop("block"),
            "edit: the block's output (Scale 1.0)": self.loop("block",
                                                              lambda: wb.edit(self.model, wb.Scale(block, 1.0))),
            "trace: the block": self.loop("block", lambda: wb.trace(self.model, modules=[block])),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--calls", type=int, default=200)
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
        alone = Isolated(model, ids, args.calls)
        fns = alone.methods()
        with torch.no_grad():
            samples = interleaved_samples(fns, "cpu", warmup=2, repeats=args.repeats)
        print(f"\n{label}, block {alone.layer.layer} and its projection alone, {args.calls} calls a round")
        print("| method | us per call | extra us per call |")
        print("|---|---|---|")
        for name in fns:
            base = samples["plain: block" if "block" in name else "plain: projection"]
            per = statistics.median(samples[name]) / args.calls
            extra = statistics.median((a - b) / args.calls for a, b in zip(samples[name], base, strict=True))
            print(f"| {name} | {per * 1e6:.0f} | {'' if name.startswith('plain') else f'{extra * 1e6:.0f}'} |")


if __name__ == "__main__":
    main()
