"""This checkout against an earlier revision, in one run: forward, capture, generate and decode step times,
paired ratios.

Run: .venv/bin/python benchmarks/versus.py REV [--repeats N]
REV's `workbench/` is extracted with `git archive` and imported as the package `workbench_rev`, so both
versions run side by side on the same weights and inputs, interleaved round by round. A ratio above 1
means this checkout is slower than REV. SmolLM2-135M's shape with random weights, float32, CPU.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch
from common import environment, interleaved_samples, paired_ratio

import workbench

REPO = Path(__file__).resolve().parent.parent


def import_revision(rev: str, into: Path):
    """`workbench` as it was at `rev`, importable as `workbench_rev` (its imports are package-relative)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "workbench"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "workbench").rename(into / "workbench_rev")
    sys.path.insert(0, str(into))
    return importlib.import_module("workbench_rev")


def decoder_class(package):
    """The fixed-shape decoder of either layout (model/decoder.py now, model/fast.py before)."""
    for name in ("decoder", "fast"):
        try:
            module = importlib.import_module(f"{package.__name__}.model.{name}")
        except ImportError:
            continue
        if hasattr(module, "FastDecoder"):
            return module.FastDecoder
    raise SystemExit(f"{package.__name__} has no FastDecoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.rev, Path(tmp))
        fields = dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                      max_seq_len=2048, positions="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=True)
        new_model = workbench.TransformerLM(workbench.ModelConfig(**fields)).eval()
        old_model = old.TransformerLM(old.ModelConfig(**fields)).eval()
        old_model.load_state_dict(new_model.state_dict())
        print(f"{environment('cpu')}; this checkout vs {args.rev}, SmolLM2-135M shape (random weights)")
        print(f"{'what':>22} | {'now ms':>8} | {'rev ms':>8} | {'now/rev':>7}")
        for b, t in ((1, 128), (4, 256)):
            ids = torch.randint(0, fields["vocab_size"], (b, t))
            with torch.inference_mode():
                fns = {"now": lambda ids=ids: new_model(ids), "rev": lambda ids=ids: old_model(ids)}
                _report(f"forward {b}x{t}", interleaved_samples(fns, "cpu", 2, args.repeats))
        ids = torch.randint(0, fields["vocab_size"], (1, 128))
        for what, kwargs in (("trace defaults 1x128", {}), ("trace attention 1x128", {"attention": True})):
            def traced(pkg, model, kwargs=kwargs):
                def run():
                    with torch.no_grad(), pkg.trace(model, **kwargs):  # the earlier revision fails under inference_mode
                        model(ids)
                return run
            fns = {"now": traced(workbench, new_model), "rev": traced(old, old_model)}
            _report(what, interleaved_samples(fns, "cpu", 2, args.repeats))
        prompt = torch.randint(0, fields["vocab_size"], (1, 32))
        fns = {name: (lambda pkg=pkg, model=model: pkg.generate(model, prompt, max_new_tokens=16, fast=False))
               for name, pkg, model in (("now", workbench, new_model), ("rev", old, old_model))}
        _report("generate 16 tokens", interleaved_samples(fns, "cpu", 1, max(3, args.repeats // 3)))
        steps = {}
        for name, model, cls in (("now", new_model, decoder_class(workbench)), ("rev", old_model, decoder_class(old))):
            cache = model.new_cache(1, 32 + 4 * args.repeats + 16)
            with torch.inference_mode():
                model(prompt, cache=cache)
            decoder, token = cls(model, cache, graphs=False), prompt[:, -1:]
            steps[name] = lambda decoder=decoder, token=token: decoder(token)
        with torch.inference_mode():
            _report("decode step, batch 1", interleaved_samples(steps, "cpu", 2, args.repeats))


def _report(what: str, samples: dict[str, list[float]]) -> None:
    now, rev = (sorted(samples[k])[len(samples[k]) // 2] * 1e3 for k in ("now", "rev"))
    print(f"{what:>22} | {now:8.2f} | {rev:8.2f} | {paired_ratio(samples, 'now', 'rev'):7.3f}")


if __name__ == "__main__":
    main()
