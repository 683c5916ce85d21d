"""Capture cost against the peers, in one process: paired ratios to the plain HF SDPA forward.

Run: python benchmarks/peers.py [--hf-dir DIR] [--repeats 10] [--threads 2] [--shapes 1x128 4x256]

SmolLM2-135M-Instruct's real weights as HF `LlamaForCausalLM` (float32, CPU), written once from
`workbench.models.smollm2()` into --hf-dir (a temporary folder when not given). Every method runs one
forward of the same token ids under `torch.no_grad()`, interleaved round by round with the plain forward
(rotating order), and each ratio is the median over rounds of t(method) / t(plain) from the same round.
Every method's logits are checked against plain HF before timing (largest difference printed), and each
ratio is printed with its quartiles over the rounds, so the machine's spread shows in the table itself.
One peer is the statistics a record holds, written by hand in HF hooks (mean, std, min, max, abs-max, NaN and
Inf counts of every module's output), to compare what those numbers cost.
"Held" is what the method keeps after the forward: the tensors it saved (distinct storages), or, for
workbench, the attention maps it stores (its records hold no tensors).

The peers (nnsight, TransformerLens, torchlens) run only when importable. They are no dependency of the
project: install them into a separate virtual environment and put this checkout on PYTHONPATH, e.g.
    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 transformers==5.24.0 \
        safetensors nnsight transformer_lens torchlens
    PYTHONPATH=. /tmp/peers/bin/python benchmarks/peers.py --hf-dir /tmp/smollm2-hf
(writing --hf-dir needs the SmolLM2 weights package; run once with the project's environment to create it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, interleaved_samples, smollm2_hf_checkpoint  # noqa: E402

import workbench  # noqa: E402
from workbench.capture.walk import first_float, flatten_tensors  # noqa: E402  (the records' own output walk)

LAYERS = r"^model\.layers\.\d+$"
LAYER_STATS = r"^model\.layers\.\d+$|^lm_head$"  # every module recorded, statistics on these only
Method = Callable[[torch.Tensor], tuple[torch.Tensor, int]]  # ids -> (logits, bytes held after the forward)


def held_bytes(tensors: object) -> int:
    """Bytes of the distinct storages among the tensors found in `tensors` (nested lists, tuples, dicts)."""
    seen: dict[int, int] = {}

    def walk(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(tensors)
    return sum(seen.values())


def hf_model(path: Path, attn: str) -> torch.nn.Module:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    return model.eval()


@contextlib.contextmanager
def kept_outputs(modules: list[torch.nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Plain HF hooks that keep each module's output, removed on exit."""
    kept: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _args: object, out: object) -> None:
        kept.append(out)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield kept
    finally:
        for h in handles:
            h.remove()


def completion_order(model: torch.nn.Module) -> dict[int, int]:
    """id(module) -> position of its first completed call in one small forward (modules never called are absent)."""
    order: list[int] = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, _a, _o: order.append(id(m)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 4, dtype=torch.long))
    finally:
        handle.remove()
    return {i: k for k, i in enumerate(dict.fromkeys(order))}


def own_methods(hf: torch.nn.Module, eager: torch.nn.Module) -> dict[str, Method]:
    layers = list(hf.model.layers)
    every = [m for _, m in hf.named_modules()]

    def plain(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        return hf(ids).logits, 0

    def hooks(modules: list[torch.nn.Module]) -> Method:
        def run(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
            with kept_outputs(modules) as kept:
                logits = hf(ids).logits
            return logits, held_bytes(kept)
        return run

    def hooks_with_statistics(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """What a record's statistics take when written by hand in a hook: each module's first floating output
        reduced to mean, std, min, max, abs-max and NaN/Inf counts, read at once; nothing kept."""
        def hook(_m: torch.nn.Module, _args: object, out: object) -> None:
            flat: list[tuple[str, torch.Tensor]] = []
            flatten_tensors(out, "out", flat)
            x = first_float(flat)
            if x is not None:
                values = (x.mean(), x.std(), x.min(), x.max(), x.abs().max(), x.isnan().sum(), x.isinf().sum())
                read.append([float(v) for v in values])

        read: list[list[float]] = []
        handles = [m.register_forward_hook(hook) for m in every]
        try:
            logits = hf(ids).logits
        finally:
            for h in handles:
                h.remove()
        return logits, 0

    def output_attentions(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        out = eager(ids, output_attentions=True)
        return out.logits, held_bytes(out.attentions)

    def traced(**kwargs: object) -> Method:
        def run(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
            with warnings.catch_warnings(), workbench.trace(hf, **kwargs) as tr:
                warnings.simplefilter("ignore")
                logits = hf(ids).logits
            return logits, sum(a.map_bytes for a in tr.attention)
        return run

    return {
        "HF SDPA forward (reference)": plain,
        f"HF hooks, keep {len(layers)} layer outputs": hooks(layers),
        f"HF hooks, keep all {len(every)} module outputs": hooks(every),
        f"HF hooks, statistics of all {len(every)} module outputs": hooks_with_statistics,
        "HF eager + output_attentions": output_attentions,
        "workbench trace() defaults": traced(),
        "workbench trace(stats=False)": traced(stats=False),
        "workbench trace(stats=layers and logits)": traced(stats=LAYER_STATS),
        "workbench trace(modules=layers)": traced(modules=LAYERS),
        "workbench trace(attention=True, attention_batch=None)": traced(attention=True, attention_batch=None),
        "workbench attention only (all rows; shapes, timing, stats off)": traced(
            attention=True, attention_batch=None, shapes=False, timing=False, stats=False),
        "workbench attention only, layer records": traced(
            modules=LAYERS, attention=True, attention_batch=None, shapes=False, timing=False, stats=False),
    }


def peer_methods(hf: torch.nn.Module, path: Path) -> dict[str, Method]:
    """Whichever of nnsight, TransformerLens and torchlens import here (none is a project dependency)."""
    out: dict[str, Method] = {}
    n_layers = len(hf.model.layers)
    try:
        from nnsight import NNsight
    except ImportError:
        print("(nnsight not installed: skipped)")
    else:
        wrapped = NNsight(hf)
        order = completion_order(hf)
        called = sorted((e for e in wrapped.modules() if id(e._module) in order and e._module is not hf),
                        key=lambda e: order[id(e._module)])  # nnsight wants outputs in the order they appear
        layer_envoys = list(wrapped.model.layers)

        def nnsight_save(envoys: list) -> Method:
            def run(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
                saved: list = []
                with wrapped.trace(ids):
                    for e in envoys:
                        saved.append(e.output.save())
                    out = wrapped.output.save()
                return out.logits, held_bytes(saved)
            return run

        out[f"nnsight, save {n_layers} layers"] = nnsight_save(layer_envoys)
        out[f"nnsight, save all {len(called)} module outputs"] = nnsight_save(called)
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        print("(TransformerLens' TransformerBridge not installed: skipped)")
    else:
        import tokenizers
        from transformers import PreTrainedTokenizerFast

        # The checkpoint folder has no tokenizer and the bridge wants one; token ids are passed directly.
        vocab = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
        tok = PreTrainedTokenizerFast(tokenizer_object=vocab, unk_token="<unk>")
        bridge = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32, tokenizer=tok)
        names = [n for n in bridge.hook_dict if n.endswith("hook_pattern")]

        def run_with_cache(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
            logits, cache = bridge.run_with_cache(ids)
            return logits, held_bytes(dict(cache.items()))

        def patterns(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
            logits, cache = bridge.run_with_cache(ids, names_filter=names)
            return logits, held_bytes(dict(cache.items()))

        out[f"TransformerLens run_with_cache ({len(bridge.hook_dict)} hooks)"] = run_with_cache
        out["TransformerLens, hook_pattern only"] = patterns
    try:
        import torchlens
    except ImportError:
        print("(torchlens not installed: skipped)")
    else:
        def torchlens_log(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
            log = torchlens.trace(hf, ids)
            logits = log[log.output_layers[0]].tensor
            held = held_bytes([layer.tensor for layer in log.layer_list])
            return logits, held

        out["torchlens defaults"] = torchlens_log
    return out


def versions() -> str:
    found = []
    for name in ("nnsight", "transformer-lens", "torchlens"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found) or "no peers installed"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hf-dir", type=Path, help="SmolLM2 as an HF checkpoint (written here when missing)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="+", default=["1x128", "4x256"])
    ap.add_argument("--only", help="regex: time only the methods whose name matches (the reference always runs)")
    ap.add_argument("--no-peers", action="store_true", help="skip nnsight, TransformerLens and torchlens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = smollm2_hf_checkpoint(args.hf_dir or Path(tmp))
        hf, eager = hf_model(path, "sdpa"), hf_model(path, "eager")
        methods = own_methods(hf, eager)
        if not args.no_peers:
            methods.update(peer_methods(hf, path))
    ref = next(iter(methods))
    if args.only:
        import re

        methods = {k: v for k, v in methods.items() if k == ref or re.search(args.only, k)}
    print(f"{environment('cpu')}; {versions()}")
    print(f"{path.name}: {type(hf).__name__}, float32, torch.no_grad(); workbench holds records plus the maps shown; "
          f"median paired ratio to {ref!r} over {args.repeats} interleaved rounds, "
          "with its quartiles over the rounds in brackets")
    table: dict[str, dict[str, str]] = {name: {} for name in methods}
    for shape in args.shapes:
        b, t = map(int, shape.split("x"))
        ids = torch.randint(0, hf.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected, _ = methods[ref](ids)
            held = {}
            for name, fn in methods.items():
                logits, held[name] = fn(ids)
                err = (logits.float() - expected).abs().max().item()
                if err > 1e-3:
                    raise SystemExit(f"{name}: logits differ from plain HF by {err:.2e} at {shape}")
                table[name][f"{shape} diff"] = f"{err:.0e}"
                del logits
            fns = {name: (lambda fn=fn, ids=ids: fn(ids)) for name, fn in methods.items()}
            samples = interleaved_samples(fns, "cpu", args.warmup, args.repeats)
        plain_ms = statistics.median(samples[ref]) * 1e3
        for name in methods:
            ratios = [a / b for a, b in zip(samples[name], samples[ref])]  # paired, as common.paired_ratio
            q1, q3 = statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else (ratios[0],) * 2
            table[name][shape] = f"{statistics.median(ratios):.2f} ({q1:.2f}-{q3:.2f})"
            table[name][f"{shape} held"] = fmt_bytes(held[name])
        print(f"{shape}: reference {plain_ms:.0f} ms (wall, median)")
        print_table(table, args.shapes[: args.shapes.index(shape) + 1])  # so far, in case a later shape is cut short


def print_table(table: dict[str, dict[str, str]], shapes: list[str]) -> None:
    cols = [c for s in shapes for c in (s, f"{s} held")]
    print("\n| method | " + " | ".join(cols) + " | max logit diff |")
    print("|---|" + "---|" * (len(cols) + 1))
    for name, row in table.items():
        diffs = " / ".join(row[f"{s} diff"] for s in shapes)
        print(f"| {name} | " + " | ".join(row[c] for c in cols) + f" | {diffs} |")


if __name__ == "__main__":
    main()
