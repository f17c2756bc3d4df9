"""Why a text scored as it did: how much each token moved the logit.

- NB-LR and NBOW are linear in their n-gram features, so contributions are exact: each n-gram
  present adds its own term to the logit (NB-LR: its weight times its naive-Bayes ratio, once
  however often it occurs; NBOW: its embedding's projection, over the number of features),
  and an n-gram's term is shared equally by its words.
- The recurrent and convolutional models get integrated gradients (Sundararajan et al., 2017)
  on the embeddings, from a reference of all-zero embeddings: the gradient averaged over STEPS
  points on the straight path, times the embedding. By the completeness axiom the scores sum
  to the logit minus the reference's logit; the midpoint rule leaves a gap that `gap` reports
  (checked in the tests to be under COMPLETENESS_TOLERANCE).
- A calibrated model scales the scores by 1/T; an ensemble sums its members' scores weighted by
  its stacker.

In every case `reference + sum(scores) == logit` (exactly for the linear models). Scores are in
logit units: positive pushes towards pos. Tokens past the model's `max_length` score 0.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import torch
from torch import nn

from imdbsent import models, text
from imdbsent.predict import Predictor, has_words

STEPS = 64  # points on the integrated-gradients path (midpoint rule)
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
    def complete(self) -> bool:
        """Whether the scores add up to the logit within COMPLETENESS_TOLERANCE."""
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
        """One text's explanation; tokens past the model's max_length are listed, unread. When
        integrated gradients leave a gap over the tolerance, the path is taken again with 4x
        the steps; `complete` says whether that sufficed."""
        p = self.predictor
        encoding = p.tokenizer.encode(text.clean_surrogates(raw[:text.MAX_CHARS]),
                                      add_special_tokens=False)
        if not has_words(raw, encoding.ids):  # skipped, as predict skips it
            return Explanation(raw, None, None)
        ids = torch.tensor([encoding.ids[:p.max_length]], device=p.device)
        with torch.no_grad():
            logit = p.model(ids, torch.tensor([ids.shape[1]])).double().item()
        prob = float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64)))
        for steps in (STEPS, 4 * STEPS):
            scores, reference, method = attribute(p.model, ids, steps)
            read = scores.tolist()[:len(encoding.ids)]
            tokens = [Token(tok, start, end, score, i == text.UNK_ID, k < len(read))
                      for k, (tok, i, (start, end), score) in enumerate(zip(
                          encoding.tokens, encoding.ids, encoding.offsets,
                          read + [0.0] * (len(encoding.ids) - len(read))))]
            e = Explanation(raw, prob, "pos" if prob >= p.threshold else "neg", logit,
                            reference, method, logit - reference - sum(read), tokens)
            if e.complete:
                break
        return e


def attribute(model: nn.Module, ids: torch.Tensor, steps: int = STEPS
              ) -> tuple[torch.Tensor, float, str]:
    """Each token's score [T] for one text `ids` [1, T], the reference logit, and the method."""
    if isinstance(model, models.Calibrated):
        scores, reference, method = attribute(model.model, ids, steps)
        return scores / model.temperature, reference / model.temperature + model.bias, method
    if isinstance(model, models.Ensemble):
        total, reference = torch.zeros(ids.shape[1], dtype=torch.float64), model.bias.item()
        for member, limit, weight in zip(model.members, model.max_lengths, model.weight.tolist()):
            seen = ids[:, :limit] if limit else ids
            scores, ref, _ = attribute(member, seen, steps)
            total[:seen.shape[1]] += weight * scores
            reference += weight * ref
        return total, reference, "ensemble (members weighted by the stacker)"
    if isinstance(model, models.NBLR | models.NBOW):
        return *linear_scores(model, ids), "exact (linear in its n-grams)"
    return *integrated_gradients(model, ids, steps), f"integrated gradients ({steps} steps)"


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


def integrated_gradients(model: nn.Module, ids: torch.Tensor, steps: int = STEPS
                         ) -> tuple[torch.Tensor, float]:
    """Integrated gradients on the embedding output, from all-zero embeddings: token scores
    [T] and the reference's logit. (cuDNN's RNNs have no backward pass in eval mode, so it is
    off here; on the CPU that changes nothing.)"""
    length = ids.shape[1]
    lengths = torch.tensor([length])
    if isinstance(model, models.CNN) and length < model.widest:  # as its forward pads it
        ids = nn.functional.pad(ids, (0, model.widest - length), value=text.PAD_ID)
    batch_dim = 1 if isinstance(model, models.RNN) else 0  # the tutorial's RNN is time-first
    with torch.no_grad():
        embedded = model.embedding(ids.t() if batch_dim else ids)  # [1, T, D] or [T, 1, D]
    shape = [1] * embedded.dim()
    shape[batch_dim] = steps
    alphas = (torch.arange(steps, dtype=embedded.dtype, device=ids.device) + 0.5) / steps
    path = (alphas.view(shape) * embedded).requires_grad_(True)  # the batch: one per step
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False), \
            models.output_hooked(model.embedding, lambda _output: path):
        logits = model(ids.expand(steps, -1), lengths.expand(steps))
        (grads,) = torch.autograd.grad(logits.sum(), path)
    zeros = torch.zeros_like(embedded)
    with torch.no_grad(), models.output_hooked(model.embedding, lambda _output: zeros):
        reference = model(ids, lengths).item()
    scores = (grads.mean(dim=batch_dim, keepdim=True) * embedded).sum(dim=-1).reshape(-1)
    return scores[:length].double().cpu(), reference


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
    return (f"; the model read the first {len(e.tokens) - e.unread:,} of its {len(e.tokens):,} "
            "tokens (max_length)" if e.unread else "")


def strongest(e: Explanation) -> float:
    """The largest |score| of an explanation (at least a tiny positive number)."""
    return max([abs(t.score) for t in e.tokens] + [1e-12])


def to_html(explanations: list[Explanation], title: str) -> str:
    """One self-contained page: each text with its tokens highlighted (green towards pos, red
    towards neg, stronger colour for a larger share of the text's largest score), its
    probability, and the score of each token on hover. Every piece of text is escaped."""
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
                   f"{e.reference:+.3f} + tokens {e.logit - e.reference - e.gap:+.3f}"
                   f"{f' (gap {e.gap:+.4f})' if abs(e.gap) >= 5e-5 else ''} &middot; "
                   f"{html.escape(e.method or '')}{html.escape(unread_note(e))}")
        warning = "" if e.complete else (
            f'<p class="warn">These scores miss the logit by {e.gap:+.3f}: integrated gradients '
            "did not add up along the path (a recurrent model's state can jump), so read them "
            "as a rough ranking of the words, not as how much each moved the score.</p>")
        sections.append(f'<section><p class="verdict">{verdict}</p>{warning}'
                        f'<p class="text">{"".join(spans)}</p></section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>'
            f'<h1>{html.escape(title)}</h1><p class="legend"><span class="pos">green</span> '
            'pushed towards pos, <span class="neg">red</span> towards neg, darker for more '
            "(within each text: the strongest word of a text is always darkest); hover or tap a "
            "word for its score (logit units). A word pair's or triple's score is shared "
            "equally by its words. The reference is the model's logit for a text of the same "
            "length with nothing in it (every word's embedding zero, for integrated gradients; "
            "no n-gram, for the exact scores): each score is how far that word moved the logit "
            'from there. <span class="unk">Dotted underline</span>: a word the vocabulary lacks '
            "(read as &lt;unk&gt;); grey: past the model's max_length, never read.</p>"
            + "".join(sections) + "</body></html>\n")


_CSS = ("body{font:16px/1.6 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
        "overflow-wrap:anywhere}"
        "section{border-top:1px solid #ddd;padding:.5rem 0}.verdict{color:#555;font-size:14px}"
        ".text{white-space:pre-wrap}.legend{color:#555}.pos{background:rgba(0,150,0,.5)}"
        ".neg{background:rgba(200,0,0,.5)}.unk{text-decoration:underline dotted}"
        ".warn{background:#fff3cd;border-left:4px solid #e0a800;padding:.3rem .6rem;"
        "font-size:14px}.stop{color:#999;font-size:13px;font-style:italic}")
