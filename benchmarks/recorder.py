"""Cost of `RunRecorder` per training step, as a ratio to the same loop without it, measured side by side.

Every configuration runs one AdamW training step (zero_grad, forward, cross-entropy, backward, optimizer
step) on the same model, interleaved round by round (see common.interleaved_samples), and the ratio is the
median over rounds of t(config) / t(plain) from the same round. Configurations:
- plain: no recorder;
- recorder, default cadence: the steps between the sparse metrics (attention, update ratio and tied gap
  come every 50 / 10 / 10 steps; their amortised cost is added from their own rows below);
- recorder, nothing due: the recorder's fixed cost (RNG capture, intercept scope, the host read);
- recorder, one metric every step (each metric alone), and every metric every step;
- set_detect_anomaly(True); hand-written hooks computing the same scalars (block outputs and max logit in
  forward hooks, per-module gradient norms after backward, each read with .item()); wb.trace every step.
The run file's writes are included (flush every 50 steps by default; every step here would understate
nothing: a flush is one SQLite transaction of a few kB).

    .venv/bin/python benchmarks/recorder.py --model tiny --repeats 15
    .venv/bin/python benchmarks/recorder.py --model smollm2 --batch 1 --seq 64 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import environment, interleaved_samples, paired_ratio

import workbench as wb
from workbench.training import RecorderConfig, RunRecorder

OFF = dict(loss_every=0, lr_every=0, grad_norm_every=0, update_ratio_every=0, activations_every=0,
           logits_every=0, attention_every=0, tied_every=0)
METRICS = {"loss+lr": ("loss_every", "lr_every"), "grad_norm": ("grad_norm_every",),
           "update_ratio": ("update_ratio_every",), "activations": ("activations_every",),
           "max_logit": ("logits_every",), "attention": ("attention_every",), "tied_gap": ("tied_every",)}


class Loop:
    """One model, one optimizer, one batch: `step(wrap)` runs a training step inside `wrap`."""

    def __init__(self, model: torch.nn.Module, batch: int, seq: int, vocab: int) -> None:
        self.model = model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.ids = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(0))

    def closure(self) -> torch.Tensor:
        self.opt.zero_grad()
        logits = self.model(self.ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), self.ids[:, 1:].flatten())
        loss.backward()
        return loss

    def plain(self) -> None:
        self.closure()
        self.opt.step()

    def recorded(self, rec: RunRecorder) -> Callable[[], None]:
        def step() -> None:
            rec.step(self.closure)
            self.opt.step()
        return step

    def wrapped(self, context: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], None]:
        def step() -> None:
            with context():
                self.closure()
            self.opt.step()
        return step


class HandHooks:
    """The same scalars by hand: forward hooks on the blocks and the root, and a loop over modules."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.blocks = list(loop.model.blocks)
        self.values: list[float] = []

    def _block(self, _m: torch.nn.Module, _a: object, out: torch.Tensor) -> None:
        x = out.detach()
        self.values += [x.pow(2).mean().sqrt().item(), x.abs().max().item(), (~torch.isfinite(x)).sum().item()]

    def _root(self, _m: torch.nn.Module, _a: object, out: torch.Tensor) -> None:
        self.values.append(out.detach().abs().max().item())

    def step(self) -> None:
        handles = [b.register_forward_hook(self._block) for b in self.blocks]
        handles.append(self.loop.model.register_forward_hook(self._root))
        try:
            self.values = [self.loop.closure().item()]
        finally:
            for h in handles:
                h.remove()
        for _name, m in self.loop.model.named_modules():
            grads = [p.grad for p in m.parameters(recurse=False) if p.grad is not None]
            if grads:
                self.values.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)).item())
        self.loop.opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                   help="cpu: process CPU time (steadier on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # detect_anomaly warns on every entry
    torch.manual_seed(0)
    cfg = wb.ModelConfig.preset("smollm2-135m") if args.model == "smollm2" else wb.ModelConfig.preset("tiny")
    loop = Loop(wb.TransformerLM(cfg), args.batch, args.seq, cfg.vocab_size)
    tmp = Path(tempfile.mkdtemp())
    recs: dict[str, RunRecorder] = {}

    def recorder(name: str, **kw: object) -> Callable[[], None]:
        recs[name] = RunRecorder(loop.model, tmp / f"{len(recs)}.wbrun", optimizer=loop.opt,
                                 config=RecorderConfig(**kw))  # type: ignore[arg-type]
        return loop.recorded(recs[name])

    every = {k: 1 for k in OFF}
    fns: dict[str, Callable[[], None]] = {
        "plain": loop.plain,
        "recorder, default cadence": recorder("default"),
        "recorder, nothing due": recorder("nothing", **OFF, replay=False),
        **{f"only {m} every step": recorder(m, **{**OFF, **{k: 1 for k in keys}}, replay=False)
           for m, keys in METRICS.items()},
        "recorder, every metric every step": recorder("all", **every, replay=False),
        "set_detect_anomaly(True)": loop.wrapped(torch.autograd.detect_anomaly),
        "hand-written hooks, same scalars": HandHooks(loop).step,
        "wb.trace(gradients=True) every step": loop.wrapped(lambda: wb.trace(loop.model, gradients=True)),
    }
    samples = interleaved_samples(fns, "cpu", warmup=1, repeats=args.repeats, clock=args.clock)
    for rec in recs.values():
        rec.close()
    ratios = {k: paired_ratio(samples, k, "plain") for k in fns}
    sparse = {"attention": 50, "update_ratio": 10, "tied_gap": 10}  # the default cadences of the sparse metrics
    amortised = ratios["recorder, default cadence"] + sum(
        (ratios[f"only {m} every step"] - ratios["recorder, nothing due"]) / n for m, n in sparse.items())
    print(environment("cpu"))
    print(f"model {args.model} ({cfg.n_layers} layers, d={cfg.d_model}, vocab {cfg.vocab_size}), batch "
          f"{args.batch}x{args.seq}, AdamW, {args.repeats} interleaved rounds, {args.clock} clock")
    print(f"plain step: {statistics.median(samples['plain']) * 1e3:.1f} ms (median)")
    print("| configuration | ms/step (median) | ratio to plain |")
    print("|---|---|---|")
    for k in fns:
        print(f"| {k} | {statistics.median(samples[k]) * 1e3:.1f} | {ratios[k]:.3f} |")
    print(f"| recorder, default cadence, sparse metrics amortised | | {amortised:.3f} |")


if __name__ == "__main__":
    main()
