"""Train the shipped tiny model: a 2-layer attention-only transformer that learns an induction circuit.

Data: [BOS] + a random segment of L words + the same segment again, L drawn per batch. The first half
is unpredictable (loss near ln(508)), the repeat is predictable only by copying, which a 2-layer
attention-only model does with a previous-token head (layer 0) feeding an induction head (layer 1).

Usage (from the repository root; writes assets/tiny/):
    .venv/bin/python scripts/train_tiny.py [--steps N] [--out DIR]

Everything is seeded: torch.manual_seed for the initialisation and a dedicated torch.Generator for
the data, so two runs with the same arguments on the same machine produce the same weights.
`train()` is importable (tests run it for a few steps twice and compare losses exactly).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from workbench.io.save import save_pretrained  # noqa: E402
from workbench.model.config import ModelConfig  # noqa: E402
from workbench.model.transformer import TransformerLM  # noqa: E402

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")  # ids 0, 1, 2, 3
PUNCTUATION = (".", ",", "?", "!")  # ids 4..7
WORDS = """
the of and to in is it you that he was for on are with as his they be at one have this from or had
by word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him
two has look more day could go come did number sound no most people my over know water than call
first who may down side been now find any new work part take get place made live where after back
little only round man year came show every good me give our under name very through just form
sentence great think say help low line differ turn cause much mean before move right boy old too
same tell does set three want air well also play small end put home read hand port large spell add
even land here must big high such follow act why ask men change went light kind off need house
picture try us again animal point mother world near build self earth father head stand own page
should country found answer school grow study still learn plant cover food sun four between state
keep eye never last let thought city tree cross farm hard start might story saw far sea draw left
late run while press close night real life few north open seem together next white children begin
got walk example ease paper group always music those both mark often letter until mile river car
feet care second book carry took science eat room friend began idea fish mountain stop once base
hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red
list though feel talk bird soon body dog family direct pose leave song measure door product black
short numeral class wind question happen complete ship area half rock order fire south problem piece
told knew pass since top whole king space heard best hour better true during hundred five remember
step early hold west ground interest reach fast verb sing listen six table travel less morning ten
simple several vowel toward war lay against pattern slow center love person money serve appear road
map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark
machine note wait plan figure star box noun field rest correct able pound done beauty drive stood
contain front teach week final gave green oh quick develop ocean warm free minute strong special
mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue
object decide surface deep moon island foot system busy test record boat common gold possible plane
stead dry wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire
bring yes distant fill east paint language among grand ball yet wave drop heart am present
""".split()  # 504 common English words, ids 8..511
FIRST_WORD_ID = len(SPECIALS)  # random segments draw from every non-special token (punctuation included)
DEFAULT_OUT = REPO / "assets" / "tiny"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of one training run."""

    steps: int = 3000  # optimizer steps (the induction phase change happens near step 1200 with seed 0)
    batch_size: int = 32  # sequences per step
    min_len: int = 6  # shortest repeated segment (sequence length 1 + 2 * L)
    max_len: int = 40  # longest repeated segment
    lr: float = 3e-3  # peak AdamW learning rate
    warmup: int = 100  # linear warm-up steps, then cosine decay to lr / 10
    weight_decay: float = 0.01  # AdamW weight decay on matrices
    seed: int = 0  # seeds the initialisation (torch.manual_seed) and the data generator
    threads: int = 1  # torch.set_num_threads; 1 keeps runs bit-identical and avoids OpenMP thrashing on a busy CPU


def model_config() -> ModelConfig:
    """The shipped architecture: 2 attention-only layers, 4 heads of width 16, RoPE, pre-RMSNorm."""
    return ModelConfig(
        vocab_size=len(SPECIALS) + len(PUNCTUATION) + len(WORDS),
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=1,  # unused: mlp="none" builds no MLP
        max_seq_len=128,
        positions="rope",
        norm="rmsnorm",
        mlp="none",
        tie_embeddings=False,
    )


def build_tokenizer() -> Tokenizer:
    """WordLevel tokenizer: lower-cased words split on whitespace and punctuation; unknown words -> [UNK]."""
    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *PUNCTUATION, *WORDS))}
    if len(vocab) != len(SPECIALS) + len(PUNCTUATION) + len(WORDS):
        raise ValueError("the word list has duplicates")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, glues punctuation
    tok.add_special_tokens(list(SPECIALS))
    return tok


def tokenizer_config() -> dict:
    """Special tokens, HF style (`tokenizer_config.json`); `workbench.models.tiny()` reads it."""
    return {
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "add_bos_token": True,  # the model was trained with [BOS] at position 0
        "model_max_length": model_config().max_seq_len,
    }


def repeated_batch(gen: torch.Generator, batch_size: int, length: int, vocab_size: int) -> torch.Tensor:
    """(B, 1 + 2L) ids: [BOS], L random non-special tokens, the same L tokens again."""
    seg = torch.randint(FIRST_WORD_ID, vocab_size, (batch_size, length), generator=gen)  # (B, L)
    bos = torch.full((batch_size, 1), SPECIALS.index("[BOS]"), dtype=torch.long)
    return torch.cat([bos, seg, seg], dim=1)  # (B, 1 + 2L)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(cfg: TrainConfig = TrainConfig(), *, progress: bool = True) -> tuple[TransformerLM, list[float]]:
    """Train from scratch; returns the model (eval mode) and the loss of every step.

    The caller's thread count and global RNG state are restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = TransformerLM(model_config())
        return _fit(model, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(model: TransformerLM, cfg: TrainConfig, progress: bool) -> tuple[TransformerLM, list[float]]:
    vocab_size = model.config.vocab_size
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="train tiny", disable=not progress)
    for step in bar:
        length = int(torch.randint(cfg.min_len, cfg.max_len + 1, (1,), generator=gen))
        ids = repeated_batch(gen, cfg.batch_size, length, vocab_size)  # (B, T)
        logits = model(ids[:, :-1], validate=False)  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), losses


@torch.no_grad()
def evaluate(model: TransformerLM, *, length: int = 24, batch_size: int = 64, seed: int = 1234) -> dict:
    """Loss on each half and the best previous-token / induction head scores on fresh sequences.

    Loss "first half" covers predictions of segment tokens 2..L (token 1 follows [BOS] and is
    equally random); "repeat" covers predictions of all L repeated tokens.
    Previous-token score of a head: mean attention from position i to i-1 (i >= 1).
    Induction score: mean attention from repeat position i to i - L + 1, the token that followed
    the earlier occurrence of the current token.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = repeated_batch(gen, batch_size, length, model.config.vocab_size)  # (B, 1 + 2L)
    patterns: dict[int, torch.Tensor] = {}
    handles = [
        block.attn.hook_pattern.register_forward_hook(lambda _m, _i, out, n=n: patterns.__setitem__(n, out))
        for n, block in enumerate(model.blocks)
    ]
    try:
        logits = model(ids)  # (B, T, V)
    finally:
        for h in handles:
            h.remove()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    L = length
    first, repeat = nll[:, 1:L].mean().item(), nll[:, L:].mean().item()
    T = ids.shape[1]
    q = torch.arange(1, T)
    prev = [patterns[n][:, :, q, q - 1].mean(dim=(0, 2)).tolist() for n in sorted(patterns)]  # per head
    qi = torch.arange(L + 1, T)
    induction = [patterns[n][:, :, qi, qi - L + 1].mean(dim=(0, 2)).tolist() for n in sorted(patterns)]
    return {
        "segment_length": L,
        "loss_first_half": first,
        "loss_repeat": repeat,
        "uniform_loss": math.log(model.config.vocab_size - FIRST_WORD_ID),
        "previous_token_score": prev,  # [layer][head]
        "induction_score": induction,  # [layer][head]
    }


def write_assets(model: TransformerLM, cfg: TrainConfig, metrics: dict, seconds: float, out: Path) -> None:
    """config.json + model.safetensors (workbench format), tokenizer files, training metadata, README."""
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, out)
    build_tokenizer().save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    meta = {
        "script": "scripts/train_tiny.py",
        "train_config": asdict(cfg),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parameters": model.num_parameters(),
        "eval": metrics,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(_readme(cfg, metrics, seconds, model.num_parameters()))


def _readme(cfg: TrainConfig, m: dict, seconds: float, params: int) -> str:
    best_prev = max(m["previous_token_score"][0])
    head_prev = m["previous_token_score"][0].index(best_prev)
    best_ind = max(m["induction_score"][1])
    head_ind = m["induction_score"][1].index(best_ind)
    c = model_config()
    return f"""# tiny: a 2-layer attention-only induction model

Made by `scripts/train_tiny.py` (seed {cfg.seed}, {cfg.steps} steps of batch {cfg.batch_size},
{cfg.threads} CPU threads, {seconds:.0f} s). Load it with `workbench.models.tiny()`.

- Architecture: 2 layers, attention only (`mlp="none"`), d_model {c.d_model}, {c.n_heads} heads, RoPE,
  pre-RMSNorm, untied embeddings, max_seq_len {c.max_seq_len}; {params:,} parameters, float32.
- Data: `[BOS]` + L random tokens + the same L tokens, L uniform in [{cfg.min_len}, {cfg.max_len}].
- Tokenizer (`tokenizer.json`): WordLevel over 504 common English words and `. , ? !`, lower-cased,
  split on whitespace and punctuation. Ids: `[PAD]` 0, `[BOS]` 1, `[EOS]` 2, `[UNK]` 3.
  `tokenizer_config.json` sets `add_bos_token: true`: the model always saw `[BOS]` at position 0,
  so `Tokenizer.encode` prepends it unless called with `add_bos=False`.

Measured after training on 64 fresh sequences with L = {m["segment_length"]} (see `training.json`):

| quantity | value |
|---|---|
| loss on the first half (uniform guess: {m["uniform_loss"]:.2f}) | {m["loss_first_half"]:.3f} |
| loss on the repeated half | {m["loss_repeat"]:.3f} |
| previous-token score, best layer-0 head (head {head_prev}) | {best_prev:.3f} |
| induction score, best layer-1 head (head {head_ind}) | {best_ind:.3f} |

Previous-token score: mean attention from each position to the one before it.
Induction score: mean attention from a repeated token to the token that followed its first occurrence.
Copying is best for segments of about 15-45 tokens; short repeats (L <= 10) are copied less
confidently, and segments beyond the trained lengths (L > 40, sequences past 81 tokens) degrade.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    cfg = TrainConfig(steps=args.steps, seed=args.seed)
    start = time.perf_counter()
    model, losses = train(cfg)
    seconds = time.perf_counter() - start
    metrics = evaluate(model)
    write_assets(model, cfg, metrics, seconds, args.out)
    print(f"trained {cfg.steps} steps in {seconds:.1f} s; last-step loss {losses[-1]:.3f}")
    print(
        f"loss first half {metrics['loss_first_half']:.3f} (uniform {metrics['uniform_loss']:.3f}), "
        f"repeated half {metrics['loss_repeat']:.3f}"
    )
    print(f"previous-token score per layer-0 head: {[round(s, 3) for s in metrics['previous_token_score'][0]]}")
    print(f"induction score per layer-1 head: {[round(s, 3) for s in metrics['induction_score'][1]]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
