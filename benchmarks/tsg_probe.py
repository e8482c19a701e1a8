"""Diagnostic: can the tiny LLM, trained from scratch, learn TSG's lookup at all, and in which prompt layout?

An abstract version of "When does the <source> start?", with everything but the LLM taken away: a clip is
``--tokens`` audio tokens 0.4 s apart; each of ``--sources`` sources present in it starts (and, with
``--runs 2``, stops and starts again) at random times; each audio token carries, per source, whether it
sounds and whether it starts at that token, plus the ``digits`` time embedding of must (its ``M:SS``
digits through the LLM's own input embeddings, one gate per slot). The question is
``<when> <source> <start> <?>`` and the answer ``M:SS`` of the source's *first* onset. A random-init
Qwen2 of the tiny recipe's size (``LLMConfig`` defaults) learns it with answer-only cross-entropy;
every ``--eval-every`` steps it answers 256 fixed held-out questions greedily, scored as Hit@3s.
``--model must`` asks the same clips through must's own MusicLALM instead (its tokenizer, chat prompt
with the task builder's four TSG phrasings, projector, time embedding, LLM and generation), with the
features in place of the encoder's, as ``oracle_sft.py`` does.

    python benchmarks/tsg_probe.py --layout after    # the paper's layout: music, then question
    python benchmarks/tsg_probe.py --layout both     # question, music, question again
    python benchmarks/tsg_probe.py --layout before --runs 2 --features activity
    python benchmarks/tsg_probe.py --model must --layout both --steps 1000 --eval-every 250
    python benchmarks/tsg_probe.py --layout after --answer token --source-last   # both changes of "Grounded answers"
    python benchmarks/tsg_probe.py --model must --layout after --set time_embedding.kind=tokens answer_format=grounded

Figures and the conclusion: ``benchmarks/results/tiny_recipe.md`` ("Question first").
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from must.models.config import LLMConfig
from must.timecode import format_time

STEP_S = 0.4  # seconds between audio tokens (2.5 tokens/s, the recipe's rate)
COLON = 10  # token ids: 0-9 digits, 10 ':', then the source words, then <when> <start> <?> <bos>


def build(args) -> tuple[Qwen2ForCausalLM, nn.Module, nn.Parameter]:
    """The random-init LLM (tiny recipe size unless ``--layers``/``--hidden``/``--heads`` say otherwise),
    the feature projection, and the 3 digit-slot gates."""
    tiny = LLMConfig()
    hidden, heads = args.hidden or tiny.hidden_size, args.heads or tiny.heads
    # Wider than the recipe: key/value heads and the MLP keep the recipe's ratios to the width.
    kv = tiny.kv_heads if args.heads is None else max(1, heads * tiny.kv_heads // tiny.heads)
    # Time tokens (--answer token): one vocabulary entry per second of the clip after the words, and the
    # output rows tied to the input embeddings, so the answer is a copy of an audio token's time.
    cfg = Qwen2Config(vocab_size=TIME0(args) + n_seconds(args), hidden_size=hidden,
                      num_hidden_layers=args.layers or tiny.layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=hidden * tiny.intermediate_size // tiny.hidden_size,
                      max_position_embeddings=1024, tie_word_embeddings=args.answer == "token")
    llm = Qwen2ForCausalLM(cfg)
    if args.answer == "pointer":  # query and key maps of the pointer head, trained with the LLM
        llm.pointer = nn.ModuleDict({"q": nn.Linear(hidden, hidden), "k": nn.Linear(hidden, hidden)})
    proj = nn.Linear(2 * args.sources, hidden)
    gates = nn.Parameter(1.0 + 0.5 * torch.randn(3, hidden))  # as must's digits embedding
    return llm, proj, gates


def TIME0(args) -> int:  # noqa: N802 - a constant of the vocabulary layout
    """Id of the first time token (``--answer token``): after the digits, ':', the sources and 4 markers."""
    return COLON + args.sources + 5


def n_seconds(args) -> int:
    """Time tokens needed to name every second of a clip (``--tokens`` x 0.4 s), with one to spare."""
    return int(args.tokens * STEP_S) + 2


def answer_ids(seconds: float, args) -> list[int]:
    """The answer's ids: ``M:SS`` digits, or the one time token of the whole second (``pointer``: the same,
    unused: the answer is an audio position)."""
    return digits(seconds) if args.answer == "digits" else [TIME0(args) + round(seconds)]


def digits(seconds: float) -> list[int]:
    """``M:SS`` token ids of a time under 10 minutes (seconds), e.g. 83.4 -> [1, ':', 2, 3]."""
    return [COLON if c == ":" else int(c) for c in format_time(seconds)]


def draw(n: int, args, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` clips: features (n, T, 2S) [sounding | starts here], asked source (n,), answer ids (n, 4),
    the asked time (n,) in seconds (the source's first onset, or with ``--ask offset`` its final offset),
    and token times (T,) in seconds."""
    T, S = args.tokens, args.sources
    times = torch.arange(T) * STEP_S + STEP_S / 2
    span = T * STEP_S
    present = torch.rand(n, S, generator=gen).argsort(-1) < args.present  # (n, S)
    # Run edges sorted in [3 s, end - 3 s]: start, stop, start, stop... (runs per source).
    edges = (torch.rand(n, S, 2 * args.runs, generator=gen) * (span - 6) + 3).sort(-1).values
    sounding = torch.zeros(n, S, T, dtype=torch.bool)
    first = torch.full((n, S), math.inf)  # onset of the first run that holds a token, seconds
    last = torch.full((n, S), -math.inf)  # offset of the last run that holds a token, seconds
    for r in reversed(range(args.runs)):
        on, off = edges[..., 2 * r, None], edges[..., 2 * r + 1, None]
        if args.runs == 1 and args.ask == "onset":
            off = torch.full_like(off, span)  # one run: the source plays on to the end
        run = (times >= on) & (times < off) & present[..., None]
        sounding |= run
        first = torch.where(run.any(-1), on[..., 0], first)  # a run shorter than a token is silent
        last = torch.where(run.any(-1) & (last == -math.inf), off[..., 0], last)
    starts = sounding & ~F.pad(sounding, (1, 0))[..., :-1]
    feats = [sounding.float(), starts.float() if args.features == "onset" else torch.zeros(n, S, T)]
    heard = sounding.any(-1).float() + 1e-9  # ask about a source that sounds
    asked = torch.multinomial(heard, 1, generator=gen).squeeze(1)
    at = (first if args.ask == "onset" else last)[torch.arange(n), asked]
    return {"features": torch.cat(feats, 1).transpose(1, 2), "asked": asked,
            "answer": torch.tensor([answer_ids(t, args) for t in at.tolist()]), "at": at, "times": times}


def sequence(batch: dict, args, llm, proj, gates) -> torch.Tensor:
    """(n, L, H) input embeddings laid out per ``--layout``; the last positions are the answer."""
    emb = llm.get_input_embeddings()
    n, S = batch["asked"].shape[0], args.sources
    if args.answer in ("token", "pointer"):  # each audio token's time embedding is its second's time token
        audio = proj(batch["features"]) + emb(TIME0(args) + batch["times"].round().long())
    else:
        slots = torch.tensor([[d for j, d in enumerate(digits(t)) if j != 1] for t in batch["times"].tolist()])
        audio = proj(batch["features"]) + (emb(slots) * gates).sum(1)  # (n, T, H)
    when, start, ask = (torch.full((n,), COLON + S + k) for k in (1, 2, 3))
    source = COLON + 1 + batch["asked"]
    # --source-last: the position that predicts the time already holds what is asked (one lookup).
    order = [when, start, ask, source] if args.source_last else [when, source, start, ask]
    q_ids = torch.stack(order, 1)
    q, bos = emb(q_ids), emb(torch.full((n, 1), COLON + S + 4))
    parts = {"after": [bos, audio, q], "before": [bos, q, audio], "both": [bos, q, audio, q]}[args.layout]
    return torch.cat(parts + [emb(batch["answer"])], 1)


@torch.no_grad()
def hit_at_3s(batch: dict, args, llm, proj, gates) -> float:
    """Greedy answers to ``batch``'s questions, % within 3 s of the asked time (unparsable = miss)."""
    width = batch["answer"].shape[1]
    x = sequence(batch, args, llm, proj, gates)[:, :-width]
    emb = llm.get_input_embeddings()
    out = []
    for _ in range(width):
        nxt = llm(inputs_embeds=x).logits[:, -1].argmax(-1)
        out.append(nxt)
        x = torch.cat([x, emb(nxt)[:, None]], 1)
    hits = 0
    for ids, onset in zip(torch.stack(out, 1).tolist(), batch["at"].tolist()):
        if args.answer == "token":
            hits += ids[0] >= TIME0(args) and abs(ids[0] - TIME0(args) - onset) <= 3
            continue
        m, colon, tens, ones = ids
        ok = colon == COLON and max(m, tens, ones) <= 9
        hits += ok and abs(m * 60 + tens * 10 + ones - onset) <= 3
    return 100.0 * hits / len(out[0])


def pointer_logits(batch: dict, args, llm, proj, gates) -> torch.Tensor:
    """``--answer pointer``: (n, T) scores of every audio token as the answer, from the question's last
    position (a query) against each audio token's last-layer state (a key), as a pointer into the input."""
    if args.layout != "after":
        raise SystemExit("--answer pointer is measured with --layout after")
    x = sequence(batch, args, llm, proj, gates)[:, : -batch["answer"].shape[1]]  # no answer tokens
    h = llm.model(inputs_embeds=x).last_hidden_state  # (n, L, H), after the final norm
    T = args.tokens
    audio = h[:, 1 : 1 + T] if args.pointer_keys == "states" else x[:, 1 : 1 + T]  # after <bos>: the audio
    q, k = llm.pointer["q"](h[:, -1]), llm.pointer["k"](audio)
    return torch.einsum("nh,nth->nt", q, k) / math.sqrt(h.shape[-1])


def pointer_target(batch: dict) -> torch.Tensor:
    """(n,) index of the first audio token at or after the asked time (where the source first sounds, or first falls silent)."""
    return (batch["times"][None] >= batch["at"][:, None]).float().argmax(-1)


@torch.no_grad()
def pointer_hit_at_3s(batch: dict, args, llm, proj, gates) -> float:
    """% of ``batch``'s questions whose highest-scoring audio token is within 3 s of the asked time."""
    got = batch["times"][pointer_logits(batch, args, llm, proj, gates).argmax(-1)]
    return 100.0 * ((got - batch["at"]).abs() <= 3).float().mean().item()


def must_model(overrides: list[str], time_logit_scale: float = 1.0):
    """must's own tiny MusicLALM (default model config plus ``key=value`` overrides): its tokenizer,
    chat template, projector, ``digits`` time embedding and LLM; only the encoder is bypassed.
    ``time_logit_scale`` multiplies the tied time-token logits (time tokens only)."""
    from omegaconf import OmegaConf

    from must.models import time_tokens
    from must.models.lalm import MusicLALM

    model = MusicLALM.from_config(OmegaConf.from_dotlist(overrides))
    if time_logit_scale != 1.0:
        if model.cfg.time_embedding.kind != "tokens":
            raise SystemExit("--time-logit-scale needs --set time_embedding.kind=tokens")
        if model._tie_handle is not None:
            model._tie_handle.remove()
        te = model.time_embedding
        model._tie_handle = time_tokens.tie_head(model.llm, te.first, te.count, time_logit_scale)
    return model


def must_encoding(batch: dict, model):
    """The abstract clip as an :class:`AudioEncoding`: features in the first ``2S`` of the encoder's
    ``D`` dims (x3, as ``oracle_sft.py`` does), zeros elsewhere; tokens at the batch's times."""
    from must.models.lalm import AudioEncoding

    n, T, F2 = batch["features"].shape
    feats = torch.zeros(n, T, model.encoder.hidden_size)
    feats[..., :F2] = 3.0 * batch["features"]
    times = batch["times"].expand(n, T)
    return AudioEncoding(features=feats, times=times, mask=torch.ones(n, T, dtype=torch.bool),
                         covered_seconds=torch.full((n,), T * STEP_S), durations=torch.full((n,), T * STEP_S),
                         transition_probs=torch.zeros(n, T), frame_times=times, frame_mask=torch.ones(n, T, dtype=torch.bool))


def must_questions(batch: dict, gen: torch.Generator, form: str = "natural",
                   answer_format: str = "plain", kind: str = "onset") -> tuple[list[str], list[str]]:
    """TSG ``kind`` (onset or offset) questions and their targets: the task builder's four phrasings (``natural``) or the
    source's name alone (``name``); targets ``M:SS``, or grounded traces (``onset bass 0:12 → 0:12``)."""
    from must.data import traces
    from must.data.synth import SOURCE_LABELS, SOURCE_NAMES
    from must.data.tasks import _OFFSET_Q, _ONSET_Q

    phrasings = _ONSET_Q if kind == "onset" else _OFFSET_Q
    pick = torch.randint(len(phrasings), (len(batch["asked"]),), generator=gen).tolist()
    templates = phrasings if form == "natural" else ("{x}",) * len(phrasings)
    names = [SOURCE_NAMES[k] for k in batch["asked"].tolist()]
    qs = [templates[p].format(x=SOURCE_LABELS[x]) for p, x in zip(pick, names)]
    times = [format_time(t) for t in batch["at"].tolist()]
    targets = [traces.target(t, traces.tsg(x, kind, t), answer_format) for x, t in zip(names, times)]
    return qs, targets


def must_hit_at_3s(batch: dict, model, questions: list[str]) -> float:
    """must's greedy generation and time parser on held-out questions: % within 3 s (miss if unparsable)."""
    from must.parsing import parse_time

    model.eval()
    texts = model.generate(must_encoding(batch, model), questions, max_new_tokens=16)
    model.train()
    hits = 0
    for (text,), onset in zip(texts, batch["at"].tolist()):
        got = parse_time(model.split_answer(text)[0]).value
        hits += got is not None and abs(got - onset) <= 3
    return 100.0 * hits / len(texts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", choices=("after", "before", "both"), default="both", help="where the question goes")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps")
    p.add_argument("--batch", type=int, default=32, help="questions per step (one per clip)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (20 warm-up steps)")
    p.add_argument("--tokens", type=int, default=100, help="audio tokens per clip (0.4 s apart)")
    p.add_argument("--sources", type=int, default=8, help="source vocabulary")
    p.add_argument("--present", type=int, default=4, help="sources present in each clip")
    p.add_argument("--runs", type=int, default=1, help="runs (start..stop) per present source")
    p.add_argument("--ask", choices=("onset", "offset"), default="onset",
                   help="ask the asked source's first onset, or its final offset (one run: it stops before the end)")
    p.add_argument("--features", choices=("onset", "activity"), default="onset",
                   help="tokens carry activity and onset flags, or activity alone")
    p.add_argument("--answer", choices=("digits", "token", "pointer"), default="digits",
                   help="--model abstract: the time as M:SS digits, one time token tied to the audio's time, or a "
                        "pointer to an audio token (query from the question's end, keys from the audio's states)")
    p.add_argument("--source-last", action="store_true",
                   help="--model abstract: the question ends with the asked source")
    p.add_argument("--pointer-keys", choices=("states", "inputs"), default="states",
                   help="--answer pointer: keys from the audio tokens' last-layer states, or from their input embeddings")
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    p.add_argument("--model", choices=("abstract", "must"), default="abstract",
                   help="a bare Qwen2 with an 8-word vocabulary, or must's MusicLALM with its chat prompt")
    p.add_argument("--question", choices=("natural", "name"), default="natural",
                   help="--model must: the task builder's phrasings, or the source's name alone")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="--model must: model config overrides, e.g. system_prompt= projector_layers=1")
    p.add_argument("--time-logit-scale", type=float, default=1.0,
                   help="--model must: multiply the tied time-token logits (is their scale what holds the lookup back?)")
    p.add_argument("--layers", type=int, help="--model abstract: decoder layers (default: the tiny recipe's)")
    p.add_argument("--hidden", type=int, help="--model abstract: hidden size (default: the tiny recipe's)")
    p.add_argument("--heads", type=int, help="--model abstract: attention heads (default: the tiny recipe's)")
    p.add_argument("--seed", type=int, default=0, help="model and data seed")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    gen, held_out = torch.Generator().manual_seed(args.seed + 1), draw(256, args, torch.Generator().manual_seed(99))
    if args.model == "must":
        if args.sources > 8:
            raise SystemExit("--model must names the 8 synthetic sources: --sources must be at most 8")
        model = must_model(args.set, args.time_logit_scale)
        model.cfg.question_position = args.layout
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        held_q, _ = must_questions(held_out, torch.Generator().manual_seed(7), args.question, kind=args.ask)
    else:
        llm, proj, gates = build(args)
        params = [*llm.parameters(), *proj.parameters(), gates]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    print(f"model={args.model} layout={args.layout} answer={args.answer} source_last={args.source_last} "
          f"runs={args.runs} features={args.features} ask={args.ask} "
          f"present={args.present}/{args.sources}")
    t0, smooth = time.time(), math.nan
    for step in range(1, args.steps + 1):
        batch = draw(args.batch, args, gen)
        if args.model == "must":
            qs, answers = must_questions(batch, gen, args.question, model.cfg.answer_format, args.ask)
            loss = model(must_encoding(batch, model), qs, answers).loss
        elif args.answer == "pointer":
            loss = F.cross_entropy(pointer_logits(batch, args, llm, proj, gates), pointer_target(batch))
        else:
            w = batch["answer"].shape[1]
            logits = llm(inputs_embeds=sequence(batch, args, llm, proj, gates)).logits[:, -w - 1 : -1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["answer"].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        warm.step()
        smooth = loss.item() if math.isnan(smooth) else 0.9 * smooth + 0.1 * loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            if args.model == "must":
                hit = must_hit_at_3s(held_out, model, held_q)
            elif args.answer == "pointer":
                hit = pointer_hit_at_3s(held_out, args, llm, proj, gates)
            else:
                hit = hit_at_3s(held_out, args, llm, proj, gates)
            print(f"step {step:5d}  loss {smooth:.3f}  hit@3s {hit:5.1f}  ({time.time() - t0:.0f} s)", flush=True)
    print(f"final_hit_at_3s={hit:.1f}")


if __name__ == "__main__":
    main()
