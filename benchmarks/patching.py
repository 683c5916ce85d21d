"""Residual-stream activation patching on SmolLM2, against TransformerLens and nnsight, in one process.

Run: python benchmarks/patching.py [--hf-dir DIR] [--repeats 3] [--threads 2] [--no-peers] [--heads]

SmolLM2-135M-Instruct's real weights as HF `LlamaForCausalLM` (float32, CPU, SDPA), written once from
`workbench.models.smollm2()` into --hf-dir (see benchmarks/peers.py). The task is the IOI prompt "When Mary
and John went to the store, John gave a drink to" (14 tokens) against its corruption with the second "John"
replaced by "Mary"; the metric is the logit difference " Mary" - " John" at the last position. Every method
sweeps all 30 layers x 14 positions of the residual stream after each block (420 cells) and returns the 420
metric values; they are checked against each other (largest difference printed) before timing. The default
sweep does not run the cells whose clean activation is the corrupted run's own (positions 0-8, before the
prompts differ: 270 of the 420); the "every cell run" row runs them too, for the cost of the batching alone.
`--heads` sweeps layers x heads (270 cells: head h of layer l patched at every position) with our methods
only.

Each method's time is divided by the 420 cells and by one plain forward of the 14 tokens measured in the same
round (rounds interleave every method with the plain forward, rotating order); the table gives the median
per-cell ratio over rounds with its range. The peers are no dependency of the project: install them in a
separate environment and put this checkout on PYTHONPATH, e.g.
    python -m venv /tmp/peers && /tmp/peers/bin/pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.13.0 && /tmp/peers/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors \
        nnsight==0.8.1 transformer-lens==4.3.0
    PYTHONPATH=. /tmp/peers/bin/python benchmarks/patching.py --hf-dir /tmp/smollm2-hf
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, smollm2_hf_checkpoint  # noqa: E402

from workbench.interventions import batches, patching  # noqa: E402
from workbench.interventions.batches import Cell  # noqa: E402
from workbench.interventions.metrics import logit_diff  # noqa: E402
from workbench.interventions.patching import patch_heads, patch_positions  # noqa: E402

# SmolLM2's tokenizer: "When Mary and John went to the store, John gave a drink to"
CLEAN = torch.tensor([2427, 5099, 284, 2322, 3514, 288, 260, 4249, 28, 2322, 4502, 253, 5968, 288])
CORRUPTED = CLEAN.clone()
CORRUPTED[9] = 5099  # "..., Mary gave a drink to"
MARY, JOHN = 5099, 2322
Sweep = Callable[[], torch.Tensor]  # -> metric values (layers, positions)


def metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, MARY] - logits[:, -1, JOHN]).float()  # (B,)


def own_methods(hf: torch.nn.Module) -> dict[str, Sweep]:
    m = logit_diff(MARY, JOHN)

    def sweep(**kwargs: object) -> Sweep:
        return lambda: torch.tensor(patch_positions(hf, CLEAN, CORRUPTED, m, **kwargs).values)  # type: ignore[arg-type]

    def every_cell_run() -> torch.Tensor:  # the same batches, the cells the prompts share included
        run = patching.Sweep(hf, CLEAN, CORRUPTED, m, "resid")
        cells = [Cell(i, p) for i in range(run.site.layers) for p in range(CLEAN.shape[0])]
        values, _ = run.run(cells, batch=True, resume=True, skip_unchanged=False)
        return torch.tensor([[values[Cell(i, p)] for p in range(CLEAN.shape[0])] for i in range(run.site.layers)])

    return {"workbench patch_positions (batched, wave, shared cells skipped)": sweep(),
            "workbench, batched, wave, every cell run": every_cell_run,
            "workbench, batched, every block run (resume=False)": sweep(resume=False),
            "workbench, one forward per cell (batch=False)": sweep(batch=False)}


def head_methods(hf: torch.nn.Module) -> dict[str, Sweep]:
    """Layers x heads (`--heads`): ours only, no peer sweeps heads here."""
    m = logit_diff(MARY, JOHN)

    class OneLayerPerBatch(patching.Sweep):
        def chunks(self, cells: list[Cell], by_position: bool) -> list[tuple[int, list[Cell]]]:
            return batches.by_layer(cells, max(1, self.budget // self.row_bytes()))

    def by_layer() -> torch.Tensor:
        run = OneLayerPerBatch(hf, CLEAN, CORRUPTED, m, "heads")
        cells = [Cell(i, h) for i in range(run.site.layers) for h in range(run.site.heads)]
        values, _ = run.run(cells, batch=True, resume=True)
        return torch.tensor([[values[Cell(i, h)] for h in range(run.site.heads)] for i in range(run.site.layers)])

    def sweep(**kwargs: object) -> Sweep:
        return lambda: torch.tensor(patch_heads(hf, CLEAN, CORRUPTED, m, **kwargs).values)  # type: ignore[arg-type]

    return {"workbench patch_heads (batched, wave, as few batches as fit)": sweep(),
            "workbench, wave, one layer per batch": by_layer,
            "workbench, one forward per cell (batch=False)": sweep(batch=False)}


def nnsight_methods(hf: torch.nn.Module) -> dict[str, Sweep]:
    import tokenizers
    from nnsight import LanguageModel
    from transformers import PreTrainedTokenizerFast

    # nnsight batches invokes only through LanguageModel, which wants a tokenizer; token ids are passed directly
    vocab = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0, "<pad>": 1}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=vocab, unk_token="<unk>", pad_token="<pad>")
    model = LanguageModel(hf, tokenizer=tok)
    L, T = len(hf.model.layers), CLEAN.shape[0]

    def clean_outputs() -> list[torch.Tensor]:
        saved: list = []
        with model.trace(CLEAN[None]):
            for layer in model.model.layers:
                saved.append(layer.output.save())
        return [s[0] if isinstance(s, tuple) else s for s in saved]

    def per_trace() -> torch.Tensor:
        clean = clean_outputs()
        out = torch.empty(L, T)
        for layer in range(L):
            for pos in range(T):
                with model.trace(CORRUPTED[None]):
                    model.model.layers[layer].output[:, pos] = clean[layer][:, pos]
                    value = metric(model.output.logits).save()
                out[layer, pos] = value[0]
        return out

    def batched() -> torch.Tensor:
        """One trace per layer, one invoke per position: nnsight stacks the invokes into one batch."""
        clean = clean_outputs()
        out = torch.empty(L, T)
        for layer in range(L):
            values = []
            with model.trace() as tracer:
                for pos in range(T):
                    with tracer.invoke(CORRUPTED[None]):
                        model.model.layers[layer].output[:, pos] = clean[layer][:, pos]
                        values.append(metric(model.output.logits).save())
            out[layer] = torch.cat([v for v in values])
        return out

    return {"nnsight 0.8, one trace per cell": per_trace, "nnsight 0.8, one batched trace per layer": batched}


def transformer_lens_methods(path: Path) -> dict[str, Sweep]:
    import tokenizers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

    vocab = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=vocab, unk_token="<unk>")  # ids are passed directly
    bridge = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32, tokenizer=tok)
    L, T = bridge.cfg.n_layers, CLEAN.shape[0]
    names = [f"blocks.{i}.hook_resid_post" for i in range(L)]

    def run_with_hooks() -> torch.Tensor:
        """TransformerLens' patching loop (transformer_lens.patching does the same): run_with_cache on the clean
        input, then one run_with_hooks per cell."""
        _, cache = bridge.run_with_cache(CLEAN[None], names_filter=names)
        out = torch.empty(L, T)
        for layer in range(L):
            for pos in range(T):
                def hook(act: torch.Tensor, hook: object, layer: int = layer, pos: int = pos) -> torch.Tensor:
                    act[:, pos] = cache[names[layer]][:, pos]
                    return act

                logits = bridge.run_with_hooks(CORRUPTED[None], fwd_hooks=[(names[layer], hook)])
                out[layer, pos] = metric(logits)[0]
        return out

    return {"TransformerLens 4.3 run_with_hooks per cell": run_with_hooks}


def versions() -> str:
    found = [f"torch {torch.__version__}"]
    for name in ("transformers", "nnsight", "transformer-lens"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hf-dir", type=Path, help="SmolLM2 as an HF checkpoint (written here when missing)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only", help="regex: run only the methods whose name matches")
    ap.add_argument("--heads", action="store_true", help="sweep layers x heads instead (ours only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        path = smollm2_hf_checkpoint(args.hf_dir or Path(tmp))
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                               attn_implementation="sdpa").eval()
        methods = head_methods(hf) if args.heads else own_methods(hf)
        if not args.no_peers and not args.heads:
            for build in (lambda: nnsight_methods(hf), lambda: transformer_lens_methods(path)):
                try:
                    methods.update(build())
                except ImportError as err:
                    print(f"(peer not installed: {err})")
    if args.only:
        import re

        methods = {k: v for k, v in methods.items() if re.search(args.only, k)}
    L, T = len(hf.model.layers), CLEAN.shape[0]
    columns, what = (hf.config.num_attention_heads, "heads") if args.heads else (T, "positions")
    print(f"{environment('cpu')}; {versions()}")
    print(f"{type(hf).__name__} (SmolLM2-135M weights), float32, SDPA, {L} layers x {columns} {what} = "
          f"{L * columns} cells, {args.repeats} rounds; per-cell time / one plain forward of (1, {T}) in the same "
          "round")
    forward = lambda: hf(CLEAN[None]).logits  # noqa: E731
    ratios: dict[str, list[float]] = {name: [] for name in methods}
    reference: torch.Tensor | None = None
    with torch.no_grad():
        for _ in range(3):
            forward()
        for r in range(args.repeats):
            names = list(methods)
            names = names[r % len(names):] + names[: r % len(names)]
            for name in names:
                plain = min(_seconds(forward) for _ in range(5))
                t0 = time.perf_counter()
                values = methods[name]()
                ratios[name].append((time.perf_counter() - t0) / (L * columns) / plain)
                if reference is None:
                    reference, first = values, name
                diff = float((values - reference).abs().max())  # every run is checked, not only the first
                print(f"  round {r}: {name}: {ratios[name][-1]:.3f}x of a {plain * 1e3:.0f} ms forward; max |cell - "
                      f"{first}| = {diff:.1e}", flush=True)
    print("\n| method | per cell / one forward (median, range over rounds) |")
    print("|---|---|")
    for name, rs in ratios.items():
        print(f"| {name} | {statistics.median(rs):.3f}x ({min(rs):.3f}-{max(rs):.3f}) |")


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
