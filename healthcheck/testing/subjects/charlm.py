"""A character-level GPT-style language model trained with its own loop.

The model follows the usual minimal-GPT layout (token and position embeddings and the
blocks inside one ``ModuleDict`` named ``transformer``, a separate ``lm_head``), trained
with AdamW on decay and no-decay parameter groups, gradient clipping and a warm-up then
cosine schedule: the set-up most small language-model code copies. The text is made
here from a small grammar, so the subject needs no download and has real structure to
learn (next-character loss falls from ~3.3 to ~1.3 nats in a few hundred steps).

Terms: ``nll`` (next-character cross-entropy) and ``z_loss`` (the squared log-partition
function, which keeps logits from drifting; weight 1e-2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .faults import detach_if, generic_faults
from .loop import Setup, apply_variant, check_variant, decay_groups, seeded, warmup_cosine

NAME = "charlm"
CONTEXT, BATCH, WIDTH, LAYERS, HEADS = 32, 16, 48, 2, 4
LR, WEIGHT_DECAY = 3e-3, 0.1

_SUBJECTS = ("the cat", "a dog", "my friend", "the old man", "her sister", "a small bird")
_VERBS = ("sees", "likes", "follows", "finds", "paints", "calls")
_OBJECTS = ("the red ball", "a green tree", "the river", "our house", "a long road", "the moon")


def corpus(n_sentences: int = 3000, seed: int = 0) -> str:
    """Sentences from a small grammar: learnable structure, no download."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda words: words[int(torch.randint(len(words), (1,), generator=gen))]  # noqa: E731
    return " ".join(f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}." for _ in range(n_sentences))


TEXT = corpus()
VOCAB = sorted(set(TEXT))
IDS = torch.tensor([VOCAB.index(c) for c in TEXT])


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, width: int = WIDTH, layers: int = LAYERS, heads: int = HEADS,
                 context: int = CONTEXT) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab, width), "wpe": nn.Embedding(context, width),
            "h": nn.ModuleList(Block(width, heads) for _ in range(layers)), "ln_f": nn.LayerNorm(width)})
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer["wte"](idx) + self.transformer["wpe"](pos)
        blocks: nn.ModuleList = self.transformer["h"]  # type: ignore[assignment]
        for block in blocks:
            x = block(x)
        return self.lm_head(self.transformer["ln_f"](x))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def build(seed: int, variant: str = "plain", steps: int = 200) -> Setup:
    check_variant(variant)
    torch.manual_seed(seed)
    model = TinyGPT(len(VOCAB))
    if variant == "frozen":  # embeddings loaded from elsewhere and kept fixed
        model.transformer["wte"].weight.requires_grad_(False)
    opt = torch.optim.AdamW(decay_groups(model, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.95))
    start = 0.01 if variant == "warmup_small" else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, steps // 10), steps, start=start))
    extra: dict = {"head": model.lm_head}

    def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(IDS) - CONTEXT - 1, (BATCH,), generator=seeded(seed, i))
        window = torch.stack([IDS[s:s + CONTEXT + 1] for s in starts.tolist()])
        return window[:, :-1], window[:, 1:]

    def compute(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        nll = lm_loss(detach_if(extra, "nll", logits), y)
        z = torch.logsumexp(detach_if(extra, "z_loss", logits).float(), dim=-1)
        return logits, {"nll": nll, "z_loss": (z ** 2).mean()}

    setup = Setup(model, opt, sched, batches, compute, {"nll": 1.0, "z_loss": 1e-2},
                  pairing_loss=lm_loss, primary="nll", extra=extra)
    return apply_variant(setup, variant)


FAULTS = generic_faults(aux_term="z_loss", main_term="nll", lr_times_wd=1e-2)
