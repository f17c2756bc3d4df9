"""Why a text scored as it did: how much each token moved the logit.

- NB-LR and NBOW are linear in their n-gram features, so contributions are exact: each n-gram
  present adds its own term to the logit (NB-LR: its weight times its naive-Bayes ratio, once
  however often it occurs; NBOW: its embedding's projection, over the number of features),
  and an n-gram's term is shared equally by its words.
- The recurrent and convolutional models get integrated gradients (Sundararajan et al., 2017)
  on the embeddings, along the straight path from a reference text: the same length, every
  word unknown (`<unk>`'s embedding at each token). By the completeness axiom the scores sum to
  the logit minus the reference's logit; the gradients are taken at the midpoints of the
  path's intervals, halved where they miss, and what is left is `gap` (`complete` when it is
  within COMPLETENESS_TOLERANCE). A word the vocabulary lacks scores 0: it is the reference.
- A calibrated model scales the scores by 1/T; an ensemble sums its members' scores weighted by
  its stacker.

In every case `reference + sum(scores) + gap == logit` (`gap` 0 up to float32 rounding for the
linear models). Scores are in logit units: positive pushes towards pos. Tokens past the model's
`max_length` score 0.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import torch
from torch import nn

from imdbsent import models, text
from imdbsent.predict import Predictor, has_words

STEPS = 64  # equal intervals that the integrated-gradients path starts from (midpoint rule)
BUDGET = 512  # gradients at most for one text, the path's intervals halved where they miss
NARROWEST = 1e-6  # of the path: an interval no narrower is not halved (float32 alphas)
COMPLETENESS_TOLERANCE = 0.05  # |gap| allowed, in logit units, relative to max(1, |logit - ref|)


@dataclass
class Token:
    """One token as the model read it: where it is in the original text, and its score."""

    token: str
    start: int
    end: int
    score: float
    unknown: bool = False  # out of the vocabulary: the model read `<unk>` here
    read: bool = True  # False past the model's max_length: never read, listed with score 0


@dataclass
class Explanation:
    """A text's probability and its tokens' contributions; `prob_pos` is None for a text with
    no token (skipped, as `predict` skips it)."""

    text: str
    prob_pos: float | None
    label: str | None
    logit: float | None = None
    reference: float | None = None
    method: str | None = None
    gap: float | None = None  # logit - reference - sum(scores)
    tokens: list[Token] = field(default_factory=list)

    @property
    def unread(self) -> int:
        """How many tokens lie past the model's max_length (listed, never read)."""
        return sum(not t.read for t in self.tokens)

    @property
    def complete(self) -> bool | None:
        """Whether the scores add up to the logit within COMPLETENESS_TOLERANCE (None for a
        skipped text, which has none)."""
        if self.prob_pos is None:
            return None
        return self.gap is None or abs(self.gap) <= COMPLETENESS_TOLERANCE * max(
            1.0, abs(self.logit - self.reference))


class Explainer:
    """Explanations from a run's model, scored through the same model code as `predict`."""

    def __init__(self, predictor: Predictor) -> None:
        if not isinstance(predictor, Predictor):  # a run's path, say: refused now, not later
            raise TypeError(f"Explainer takes a Predictor, not {type(predictor).__name__}: "
                            "Explainer(Predictor(run))")
        self.predictor = predictor

    def explain(self, raw: str) -> Explanation:
        """One text's explanation; tokens past the model's max_length are listed, unread;
        `complete` says whether integrated gradients' scores add up to the logit."""
        if not isinstance(raw, str):
            raise TypeError(f"Explainer.explain takes one text as str, not "
                            f"{type(raw).__name__}" + (": decode it first" if isinstance(
                                raw, bytes | bytearray) else ""))
        p = self.predictor
        encoding = p.tokenizer.encode(text.clean_surrogates(raw[:text.MAX_CHARS]),
                                      add_special_tokens=False)
        if not has_words(raw, encoding.ids):  # skipped, as predict skips it
            return Explanation(raw, None, None)
        ids = torch.tensor([encoding.ids[:p.max_length]], device=p.device)
        with torch.no_grad():
            logit = p.model(ids, torch.tensor([ids.shape[1]])).double().item()
        prob = float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64)))
        scores, reference, method = attribute(p.model, ids)
        read = scores.tolist()[:len(encoding.ids)]
        tokens = [Token(tok, start, end, score, i == text.UNK_ID, k < len(read))
                  for k, (tok, i, (start, end), score) in enumerate(zip(
                      encoding.tokens, encoding.ids, encoding.offsets,
                      read + [0.0] * (len(encoding.ids) - len(read))))]
        return Explanation(raw, prob, "pos" if prob >= p.threshold else "neg", logit,
                           reference, method, logit - reference - sum(read), tokens)


def attribute(model: nn.Module, ids: torch.Tensor, budget: int = BUDGET
              ) -> tuple[torch.Tensor, float, str]:
    """Each token's score [T] for one text `ids` [1, T], the reference logit, and the method."""
    if isinstance(model, models.Calibrated):
        scores, reference, method = attribute(model.model, ids, budget)
        return scores / model.temperature, reference / model.temperature + model.bias, method
    if isinstance(model, models.Ensemble):
        total, reference = torch.zeros(ids.shape[1], dtype=torch.float64), model.bias.item()
        methods = []
        for member, limit, weight in zip(model.members, model.max_lengths, model.weight.tolist()):
            seen = ids[:, :limit] if limit else ids
            scores, ref, method = attribute(member, seen, budget)
            total[:seen.shape[1]] += weight * scores
            reference += weight * ref
            methods.append(method + (f" on its first {limit:,} tokens"
                                     if seen.shape[1] < ids.shape[1] else ""))
        return total, reference, f"ensemble, members weighted by the stacker: {'; '.join(methods)}"
    if isinstance(model, models.NBLR | models.NBOW):
        return *linear_scores(model, ids), "exact (linear in its n-grams)"
    scores, reference, used = integrated_gradients(model, ids, budget=budget)
    return scores, reference, f"integrated gradients ({used} points)"


def linear_scores(model: models.NBLR | models.NBOW, ids: torch.Tensor
                  ) -> tuple[torch.Tensor, float]:
    """Exact token scores of a linear n-gram model, and its logit with no features (the bias)."""
    features = models.ngram_ids(ids, model.vocab_size, model.buckets, model.n)[0]
    starts, widths = _spans(ids.shape[1], features.numel(), model.n)
    with torch.no_grad():
        if isinstance(model, models.NBLR):
            terms = ((model.weight.weight[features, 0] + model.W_ADJ) * model.ratio[features]
                     ).double() / model.R_ADJ
            _, inverse, counts = features.unique(return_inverse=True, return_counts=True)
            terms = terms / counts[inverse]  # binarized: once per distinct n-gram, shared
            reference = model.bias.item()
        else:
            present = features != text.PAD_ID
            terms = (model.embedding.weight[features] @ model.fc.weight[0]).double() * present
            # the mean over the features present (and the model's prior_tokens)
            terms = terms / (present.sum() + model.prior_tokens).clamp(min=1)
            reference = model.fc.bias.item()
    scores = torch.zeros(ids.shape[1], dtype=torch.float64)
    terms = terms.cpu()
    for width in range(1, model.n + 1):  # an n-gram's term, shared by its words
        at = widths == width
        for offset in range(width):
            scores.index_add_(0, starts[at] + offset, terms[at] / width)
    return scores, reference


def _spans(length: int, count: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and width of each feature `ngram_ids` makes for a text of `length` tokens: the
    words, then the 2-grams, ..., in order (`count` of them in all)."""
    starts, widths = [torch.arange(length)], [torch.ones(length, dtype=torch.long)]
    for width in range(2, n + 1):
        if sum(len(s) for s in starts) >= count:
            break
        starts.append(torch.arange(length - width + 1))
        widths.append(torch.full((length - width + 1,), width))
    return torch.cat(starts)[:count], torch.cat(widths)[:count]


class Path:
    """The straight path of a model's embeddings, alpha from 0 to 1, from the reference text
    (the same length, every word unknown: `<unk>`'s embedding at each token, padding kept) to
    the text `ids` [1, T].

    Not from all-zero embeddings: along that path a recurrent model's state can flip between
    two neighbouring float32 inputs (a jump of 6 logits at one point), which no sum of
    gradients sees; from `<unk>` the model reads input as it does in training all the way.
    (cuDNN's RNNs have no backward pass in eval mode, so it is off here; on the CPU that
    changes nothing.)"""

    def __init__(self, model: nn.Module, ids: torch.Tensor) -> None:
        self.lengths = torch.tensor([ids.shape[1]])  # the text's own, whatever pads it
        if isinstance(model, models.CNN) and ids.shape[1] < model.widest:  # as forward pads it
            ids = nn.functional.pad(ids, (0, model.widest - ids.shape[1]), value=text.PAD_ID)
        self.model, self.ids = model, ids
        self.batch_dim = 1 if isinstance(model, models.RNN) else 0  # the tutorial's: time-first
        unknown = torch.where(ids == text.PAD_ID, text.PAD_ID, text.UNK_ID)
        with torch.no_grad():  # [1, T, D], or [T, 1, D] time-first
            self.start = model.embedding(unknown.t() if self.batch_dim else unknown)
            self.change = model.embedding(ids.t() if self.batch_dim else ids) - self.start

    def __call__(self, alphas: torch.Tensor, grad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits at the points `alphas` [k] and, with `grad`, the gradient times the
        change of the embeddings, a token [k, T] (float64, on the CPU)."""
        shape = [1] * self.change.dim()
        shape[self.batch_dim] = len(alphas)
        path = (self.start + alphas.to(self.change).view(shape) * self.change
                ).requires_grad_(grad)
        with torch.set_grad_enabled(grad), torch.backends.cudnn.flags(enabled=False), \
                models.output_hooked(self.model.embedding, lambda _output: path):
            logits = self.model(self.ids.expand(len(alphas), -1),
                                self.lengths.expand(len(alphas)))
            if not grad:
                return logits.double().cpu(), None
            (grads,) = torch.autograd.grad(logits.sum(), path)
        terms = (grads * self.change).sum(dim=-1)
        return (logits.detach().double().cpu(),
                (terms.t() if self.batch_dim else terms).double().cpu())


def integrated_gradients(model: nn.Module, ids: torch.Tensor, steps: int = STEPS,
                         budget: int = BUDGET) -> tuple[torch.Tensor, float, int]:
    """Integrated gradients along `Path`: token scores [T], the reference's logit, and how
    many gradients were taken.

    The path starts as `steps` equal intervals, each scored by the gradient at its midpoint.
    The logit at both ends of an interval is known, so is what its scores miss of the logit's
    change over it; while the misses add up to more than half the tolerance, the intervals
    that miss most are halved, up to `budget` gradients in all (`budget == steps`: equal
    steps only), but none narrower than NARROWEST: float32 cannot tell its points apart."""
    if steps < 2 or budget < steps:
        raise ValueError(f"integrated gradients need steps >= 2 and budget >= steps, not "
                         f"{steps} and {budget}")
    at = Path(model, ids)
    edges = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    logits, _ = at(edges)
    lo, hi, f_lo, f_hi = edges[:-1], edges[1:], logits[:-1], logits[1:]
    f_mid, terms = at((lo + hi) / 2, grad=True)
    scored = terms * (hi - lo)[:, None]  # each interval's token scores [intervals, T]
    tolerance = COMPLETENESS_TOLERANCE * max(1.0, abs(logits[-1] - logits[0]).item()) / 2
    used = steps
    while used + 2 <= budget:
        misses = ((f_hi - f_lo) - scored.sum(dim=1)).abs()
        if misses.sum() <= tolerance:
            break
        splittable = (misses > tolerance / len(misses)) & (hi - lo > NARROWEST)  # NaN: never
        worst = [k for k in misses.argsort(descending=True).tolist() if splittable[k]]
        worst = torch.tensor(worst[:min(steps, budget - used) // 2], dtype=torch.long)
        if not len(worst):
            break
        keep = torch.ones(len(lo), dtype=torch.bool)
        keep[worst] = False
        mid = (lo[worst] + hi[worst]) / 2
        f_q, t_q = at(torch.cat([(lo[worst] + mid) / 2, (mid + hi[worst]) / 2]), grad=True)
        used += 2 * len(worst)
        widths = torch.cat([mid - lo[worst], hi[worst] - mid])
        lo, hi, f_lo, f_hi = (torch.cat([lo[keep], lo[worst], mid]),
                              torch.cat([hi[keep], mid, hi[worst]]),
                              torch.cat([f_lo[keep], f_lo[worst], f_mid[worst]]),
                              torch.cat([f_hi[keep], f_mid[worst], f_hi[worst]]))
        f_mid = torch.cat([f_mid[keep], f_q])
        scored = torch.cat([scored[keep], t_q * widths[:, None]])
    return scored.sum(dim=0)[:ids.shape[1]], logits[0].item(), used


def as_dict(e: Explanation) -> dict:
    """An explanation as plain values, for `--format jsonl`: offsets index the original text;
    P(pos) to 6 decimals, as predict writes it; a skipped text marked as predict marks it."""
    if e.prob_pos is None:
        return {"text": e.text, "label": None, "prob_pos": None, "skipped": "no words",
                "complete": None, "tokens": []}
    return {"text": e.text, "label": e.label, "prob_pos": round(e.prob_pos, 6), "logit": e.logit,
            "reference": e.reference, "method": e.method, "gap": e.gap, "complete": e.complete,
            "tokens": [{"token": t.token, "start": t.start, "end": t.end, "score": t.score,
                        "unknown": t.unknown, "read": t.read} for t in e.tokens]}


def pieces(e: Explanation) -> list[tuple[str, Token | None]]:
    """The original text cut into runs: each token's own characters with the token, and the
    text between tokens with None; joined, they give the text back exactly."""
    out: list[tuple[str, Token | None]] = []
    cursor = 0
    for t in e.tokens:
        start = max(t.start, cursor)  # (a normaliser may map one character to two tokens)
        if start > cursor:
            out.append((e.text[cursor:start], None))
        if t.end > start:
            out.append((e.text[start:t.end], t))
            cursor = t.end
    out.append((e.text[cursor:], None))
    return [(piece, token) for piece, token in out if piece]


def unread_note(e: Explanation) -> str:
    """What a long text's explanation leaves out, said where its scores are shown."""
    cut = (f"; only its first {text.MAX_CHARS:,} characters were tokenized, as predict's are"
           if len(e.text) > text.MAX_CHARS else "")
    return (f"; the model read the first {len(e.tokens) - e.unread:,} of its {len(e.tokens):,} "
            f"tokens (max_length){cut}" if e.unread else cut)


def signed(value: float, decimals: int) -> str:
    """`value` with its sign to `decimals` places, a value that rounds to zero as +0.00 (not
    -0.00)."""
    return f"{round(value, decimals) + 0.0:+.{decimals}f}"


def strongest(e: Explanation) -> float:
    """The largest |score| of an explanation (at least a tiny positive number)."""
    return max([abs(t.score) for t in e.tokens] + [1e-12])


def to_html(explanations: list[Explanation], title: str, ending: str = "") -> str:
    """One self-contained page: each text with its tokens highlighted (green towards pos, red
    towards neg, stronger colour for a larger share of the text's largest score), its
    probability, and the score of each token on hover, then `ending` (a note, if any). Every
    piece of text is escaped."""
    sections = []
    for e in explanations:
        if e.prob_pos is None:
            sections.append(f'<section><p class="verdict">skipped (no words)</p>'
                            f'<p class="text">{html.escape(e.text)}</p></section>')
            continue
        top = strongest(e)
        spans, reading = [], True
        for piece, token in pieces(e):
            if token is None:
                spans.append(html.escape(piece))
                continue
            if reading and not token.read:  # where the model stopped reading
                reading = False
                spans.append('<span class="stop">[the model read no further]</span> ')
            alpha = min(1.0, abs(token.score) / top) * 0.6
            rgb = "0,150,0" if token.score > 0 else "200,0,0"
            note = (f"{token.score:+.4f}" + (" (unknown word)" if token.unknown else "")
                    + ("" if token.read else " (not read: past the model's max_length)"))
            kind = ' class="unk"' if token.unknown else ""
            style = f"background:rgba({rgb},{alpha:.3f})" if token.read else "color:#999"
            spans.append(f'<span{kind} style="{style}" title="{html.escape(note)}">'
                         f'{html.escape(piece)}</span>')
        verdict = (f"{e.label} &middot; P(pos) {e.prob_pos:.4f} &middot; logit {e.logit:+.3f} = reference "
                   f"{signed(e.reference, 3)} + tokens {e.logit - e.reference - e.gap:+.3f}"
                   f"{f' (gap {e.gap:+.4f})' if abs(e.gap) >= 5e-5 else ''} &middot; "
                   f"{html.escape(e.method or '')}{html.escape(unread_note(e))}")
        warning = "" if e.complete else (
            f'<p class="warn">These scores miss the logit by {e.gap:+.3f}: integrated gradients '
            "did not add up along the path (the model's output changes too steeply somewhere "
            "on it), so read them as a rough ranking of the words, not as how much each moved "
            "the score.</p>")
        sections.append(f'<section><p class="verdict">{verdict}</p>{warning}'
                        f'<p class="text">{"".join(spans)}</p></section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>'
            f'<h1>{html.escape(title)}</h1><p class="legend"><span class="pos">green</span> '
            'pushed towards pos, <span class="neg">red</span> towards neg, darker for more '
            "(within each text: the strongest word of a text is always darkest); hover or tap a "
            "word for its score (logit units). A word pair's or triple's score is shared "
            "equally by its words. The reference is the model's logit for the same text with "
            "every word unknown (for integrated gradients; for the exact scores: with no "
            "n-gram): each score is how far that word moved the logit from there. "
            '<span class="unk">Dotted underline</span>: a word the vocabulary lacks (read as '
            "&lt;unk&gt;, so 0 for integrated gradients); grey: past the model's max_length, "
            "never read.</p>"
            + "".join(sections)
            + (f'<p class="warn">{html.escape(ending)}</p>' if ending else "")
            + "</body></html>\n")


_CSS = ("body{font:16px/1.6 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
        "overflow-wrap:anywhere}"
        "section{border-top:1px solid #ddd;padding:.5rem 0}.verdict{color:#555;font-size:14px}"
        ".text{white-space:pre-wrap}.legend{color:#555}.pos{background:rgba(0,150,0,.5)}"
        ".neg{background:rgba(200,0,0,.5)}.unk{text-decoration:underline dotted}"
        ".warn{background:#fff3cd;border-left:4px solid #e0a800;padding:.3rem .6rem;"
        "font-size:14px}.stop{color:#999;font-size:13px;font-style:italic}")
