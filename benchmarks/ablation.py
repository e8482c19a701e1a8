"""Ablation of the MusT recipe at the same seed and budget as ``recipes/tiny.yaml``.

Variants (each a full rerun of the recipe's stages it keeps, same per-stage steps):

- ``sft_only``      (a) SFT alone, from the model as built (no encoder adaptation, no captions);
- ``captions_sft``  (b) captions (from the model as built) + SFT;
- ``all``           (c) all four stages (the recipe as is);
- ``uniform``       (d) all four stages with uniform instead of dynamic sampling;
- ``no_source``     (e) all four stages without the source-activity head.

Writes ``benchmarks/results/ablation.md``: the MusTBench sub-metrics of each variant's evaluated
stages (after SFT, after GRPO) on the synthetic test split, the trivial baselines, and the published ablation beside.

    python benchmarks/ablation.py                              # all variants (~50 min on 2 cores)
    python benchmarks/ablation.py --variants sft_only all      # some of them
    python benchmarks/ablation.py --scale 0.5                  # every stage at half its steps
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from must.config import load_recipe
from must.eval import format_table, table_row
from must.runner import run_recipe

ROOT = Path(__file__).resolve().parents[1]

#: MusT 7B overall scores of the paper's ablation (DESIGN.md).
PUBLISHED = [
    ("base (Qwen2.5-Omni 7B)", 24.3),
    ("captions only", 25.2),
    ("QA only (SFT only)", 36.8),
    ("captions + QA", 41.9),
    ("captions + QA + GRPO (MusT)", 44.1),
    ("uniform sampling (captions + QA)", 39.8),
]

VARIANTS = {
    "sft_only": "(a) SFT only",
    "captions_sft": "(b) captions + SFT",
    "all": "(c) all four stages",
    "uniform": "(d) uniform sampling",
    "no_source": "(e) no source-activity head",
    "plain": "(f) plain answers (time tokens kept)",
    "digits": "(g) M:SS digits, plain answers (the paper's text path)",
    "no_pointer": "(h) time tokens without the time pointer",
}


def variant_recipe(base, variant: str, out: Path, scale: float):
    """The recipe of one variant: stages dropped or model options changed, same seed and steps."""
    recipe = copy.deepcopy(base)
    recipe.name = f"{base.name}-{variant}"
    recipe.output_dir = str(out / variant)
    kinds = {s.kind: s for s in recipe.stages}
    if variant == "sft_only":
        recipe.stages = [kinds["sft"]]
        recipe.stages[0].init_from = None
    elif variant == "captions_sft":
        recipe.stages = [kinds["lm_adapt"], kinds["sft"]]
        recipe.stages[0].init_from = None
    elif variant == "uniform":
        recipe.model.sampling.mode = "uniform"
    elif variant == "no_source":
        recipe.model.encoder.num_sources = 0
        for stage in recipe.stages:  # the extra crops train the source head alone: none without it
            if stage.kind == "encoder_adapt":
                stage.options["source_crops"] = 0
    elif variant == "plain":
        recipe.model.answer_format = "plain"
    elif variant == "digits":
        recipe.model.answer_format = "plain"
        recipe.model.time_embedding.kind = "digits"
        recipe.model.time_embedding.pointer = False  # it points time tokens, which digits have not
    elif variant == "no_pointer":
        recipe.model.time_embedding.pointer = False
    if recipe.model.answer_format == "plain":  # the trace rewards have nothing to read
        for stage in recipe.stages:
            if stage.kind == "grpo":
                stage.options["reward_funcs"] = ["must_reward"]
                stage.options["reward_weights"] = {}
    for stage in recipe.stages:
        stage.trainer.max_steps = max(1, round(stage.trainer.max_steps * scale))
        stage.trainer.enable_progress_bar = False
        if stage.kind == "encoder_adapt":
            stage.options["eval_init"] = False  # measured once, in the recipe run itself
    return recipe


def stage_scores(recipe) -> list[tuple[str, dict]]:
    """(stage name, scores.json) of every stage that wrote ``eval/scores.json``, in recipe order."""
    out = []
    for stage in recipe.stages:
        path = Path(recipe.output_dir) / stage.name / "eval" / "scores.json"
        if path.is_file():
            out.append((stage.name, json.loads(path.read_text())))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "tiny.yaml"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/ablation", help="where the variants' runs go")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's max_steps")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "ablation.md"))
    args = parser.parse_args()

    base = load_recipe(args.recipe)
    out = Path(args.out)
    rows, baseline, notes = [], None, []
    for variant in args.variants:
        recipe = variant_recipe(base, variant, out, args.scale)
        t0 = time.time()
        records = run_recipe(recipe)  # stage name -> its record.json, seconds included
        seconds = time.time() - t0
        found = stage_scores(recipe)
        if not found:
            notes.append(f"{VARIANTS[variant]}: no stage wrote eval/scores.json")
            continue
        # Every evaluated stage, not only the last: what SFT gives and what GRPO adds on top.
        for stage, scores in found:
            rows.append((f"{VARIANTS[variant]} [{stage}]", table_row(scores)))
            baseline = baseline or scores.get("baseline")
        per_stage = ", ".join(f"{k} {r['seconds']:.0f} s" for k, r in records.items() if r.get("seconds") is not None)
        notes.append(f"{VARIANTS[variant]}: {seconds:.0f} s in all ({per_stage}), "
                     f"{len(found[-1][1].get('rows', []))} questions scored")
        write(args, rows, baseline, notes)
    write(args, rows, baseline, notes)
    return 0


def write(args, rows, baseline, notes) -> None:
    table = list(rows) + ([("trivial baseline", table_row(baseline))] if baseline else [])
    lines = [
        "# Ablation of the tiny recipe",
        "",
        (f"Command: `python benchmarks/ablation.py {' '.join(sys.argv[1:])}` (same seed; every stage at "
         f"{args.scale:g} × its steps in `{Path(args.recipe).name}`; each variant's evaluated stages on "
         "the held-out synthetic test split, percent; TSG is Hit@3s)."),
        "",
        format_table(table, markdown=True),
        "",
        "Published ablation (MusT 7B, full MusTBench, overall): "
        + "; ".join(f"{name} {score}" for name, score in PUBLISHED) + ".",
        "",
    ] + [f"- {n}" for n in notes]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
