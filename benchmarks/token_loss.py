"""Diagnostic: which tokens of the grounded traces a trained model still gets wrong.

Teacher-forced cross-entropy of every answer token of the synthetic test split's questions, grouped by
what the token is: the n-th time token of the trace (``time1`` is TSG's looked-up time, ``time2`` its
copy after ``→``), the arrow, or the word itself. A time token near ``log(clip length in s)`` nats is
a guess from the prior; a copy (``time2`` of TSG) should cost almost nothing once the model can read its
own output.

    python benchmarks/token_loss.py runs/tiny/sft/model                     # TSG, 24 test tracks
    python benchmarks/token_loss.py /tmp/o/run/sft/model --oracle           # a model trained by oracle_sft.py
    python benchmarks/token_loss.py runs/tiny/sft/model --tasks LTR GTO --tracks 48

``--oracle`` feeds the ground-truth features of ``oracle_sft.py`` (use it for models trained that way).
Figures: ``benchmarks/results/grounded.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def token_kinds(names: list[str]) -> list[str]:
    """Each answer token's group: ``time1``, ``time2``… in order of appearance, else the token itself."""
    out, n = [], 0
    for name in names:
        if name.startswith("<|t") and name.endswith("|>"):
            n += 1
            out.append(f"time{n}")
        else:
            out.append(name)
    return out


def question_losses(model, encoding, question: str, target: str) -> tuple[list[str], list[float]]:
    """Teacher-forced CE (nats) of each token of ``target`` (+ EOS) after ``question``."""
    inputs = model.prompt_inputs(encoding, [question], [target])
    with torch.no_grad():
        logits = model.llm(**inputs, use_cache=False).logits[0]
    labels = inputs["labels"][0]
    pos = (labels != -100).nonzero().squeeze(1)
    ce = F.cross_entropy(logits[pos - 1].float(), labels[pos], reduction="none")
    return model.tokenizer.convert_ids_to_tokens(labels[pos].tolist()), ce.tolist()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a saved must model folder")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "tiny.yaml"), help="its data block is the test split")
    p.add_argument("--tasks", nargs="+", default=["TSG"], help="question tasks to score")
    p.add_argument("--tracks", type=int, default=24, help="test tracks")
    p.add_argument("--per-track", type=int, default=6, help="questions per track at most")
    p.add_argument("--oracle", action="store_true", help="ground-truth features, as oracle_sft.py trains with")
    args = p.parse_args(argv)

    from must.config import load_recipe
    from must.data.datasets import cached_track, track_seed
    from must.data.tasks import build_qas
    from must.data.traces import target
    from must.models.lalm import MusicLALM

    if args.oracle:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import oracle_sft

        oracle_sft.install_oracle()
    data = load_recipe(args.recipe).data
    model = MusicLALM.from_pretrained(args.model).eval()
    groups: dict[str, list[float]] = defaultdict(list)
    for i in range(args.tracks):
        track = cached_track(data, "test", i)
        qas = build_qas(track, track_seed(data.seed, "test", i), "test", args.tasks)[: args.per_track]
        if not qas:
            continue
        enc = model.encode_audio([torch.as_tensor(track.audio)], track.sample_rate, stochastic=False)
        for q in qas:
            names, ce = question_losses(model, enc, q.question, target(q.answer, q.trace, model.cfg.answer_format))
            for kind, c in zip(token_kinds(names), ce):
                groups[kind].append(c)
    print(f"{args.model}: tasks {' '.join(args.tasks)}, {args.tracks} test tracks (uniform over 60 times: "
          f"{math.log(60):.2f} nats)")
    for kind, v in sorted(groups.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        print(f"  {kind:16s} n={len(v):4d}  mean CE {sum(v) / len(v):.3f} nats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
