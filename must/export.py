"""``must export MODEL_DIR OUT [--merge-lora] [--push REPO_ID]``: a saved model as a folder that transformers and
peft load alone (the LLM part), with a model card; optionally uploaded to the Hugging Face Hub.

A stage's model folder is already half Hugging Face: ``llm/`` loads with ``AutoModelForCausalLM`` and
``adapters/llm/`` with ``PeftModel``. Three things keep it from standing alone, and the export fixes them:

- the adapter config has ``task_type: null`` and ``base_model_name_or_path: "llm"``, so
  ``AutoPeftModelForCausalLM`` cannot tell which class to build nor find the base: the export writes
  ``CAUSAL_LM`` and the exported base's absolute path;
- with ``time_embedding.kind: tokens`` the time tokens' logits come from their *input* embeddings through a
  forward hook must adds (``must.models.time_tokens.tie_head``), so the LM head's own rows for them are stale:
  the export copies the embedding rows into the head, so plain transformers gives must's logits;
- nothing says what the folder is: the export writes ``README.md`` (base models, the recipe and stage scores
  saved beside the model, the time-token and answer format, how to load it).

``OUT`` stays a complete must model folder too (``MusicLALM.from_pretrained(OUT)``, ``must eval OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from must.errors import MustError

ADAPTER = Path("adapters") / "llm"


def export_model(model_dir: str | Path, out: str | Path, merge_lora: bool = False,
                 trust_remote_code: bool = False) -> Path:
    """Write the export of ``model_dir`` to ``out`` (a new or empty folder); returns ``out``."""
    from must.files import ensure_dir
    from must.models.folder import load_model

    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise MustError(f"export folder {out} is not empty; give a new folder (nothing is overwritten)")
    model = load_model(model_dir, trust_remote_code=trust_remote_code)
    ensure_dir(out, "export folder")
    _time_rows_into_head(model)
    model.save_pretrained(out, merge_lora=merge_lora)
    if (out / ADAPTER).is_dir():
        _standalone_adapter(out / ADAPTER, (out / "llm").resolve(), model.tokenizer)
    (out / "README.md").write_text(model_card(model, model_dir, out, merge_lora), encoding="utf-8")
    return out


def _time_rows_into_head(model) -> None:
    """Make the LM head's time-token rows the time tokens' input embeddings, which is what must's hook computes
    (``h @ E[time]^T``), so a plain transformers load gives the same logits. Changes nothing must computes."""
    import torch  # here, not at the top: `must --help` builds this module's arguments without torch

    with torch.no_grad():
        _copy_time_rows(model)


def _copy_time_rows(model) -> None:
    te = model.cfg.time_embedding
    head, embed = model.llm.get_output_embeddings(), model.llm.get_input_embeddings()
    if te.kind != "tokens" or head is None or head.weight is embed.weight:
        return
    rows = slice(model.time_embedding.first, model.time_embedding.first + model.time_embedding.count)
    head.weight[rows] = embed.weight[rows].to(head.weight.dtype)
    if getattr(head, "bias", None) is not None:  # the hook's logits have no bias term
        head.bias[rows] = 0


def _standalone_adapter(folder: Path, base: Path, tokenizer) -> None:
    """The PEFT adapter config as ``AutoPeftModelForCausalLM`` needs it, and the tokenizer beside it (peft loads
    it from the adapter folder; without it peft asks the Hub)."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(folder))
    config.task_type = "CAUSAL_LM"
    config.base_model_name_or_path = str(base)
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


# ------------------------------------------------------------------------------------------ model card


def _run_files(model_dir: Path) -> tuple[Path | None, dict | None]:
    """The run folder a stage's ``model/`` sits in (``OUTPUT_DIR/<stage>/model``) and that stage's record."""
    record_file = model_dir.parent / "record.json"
    if not record_file.is_file():
        return None, None
    try:
        record = json.loads(record_file.read_text())
    except ValueError:
        return None, None
    return model_dir.parent.parent, record


def _stage_scores(run_dir: Path) -> list[tuple[str, dict]]:
    """(name, scores.json dict) of every evaluation the run's stages wrote, in stage-folder order."""
    found = []
    for path in sorted(run_dir.glob("*/eval/**/scores.json")):
        try:
            found.append((str(path.parent.relative_to(run_dir)), json.loads(path.read_text())))
        except ValueError:
            continue
    return found


def _format_section(cfg) -> list[str]:
    te = cfg.time_embedding
    lines = ["## Time and answer format", ""]
    if te.kind == "tokens":
        from must.models.time_tokens import count_for

        n = count_for(te.max_seconds, te.resolution)
        lines.append(
            f"Times are single vocabulary tokens `<|t0|>` … `<|t{n - 1}|>`: `<|tN|>` is N × {te.resolution:g} s from the "
            f"track start (up to {te.max_seconds:g} s). They are ordinary added tokens of the exported tokenizer "
            "(`decode(..., skip_special_tokens=True)` keeps them); `must.models.time_tokens.to_tokens` writes `M:SS` as them, "
            "`to_text` renders them back as `M:SS`.")
    else:
        lines.append(f"Times are written as text, `M:SS` (time embedding `{te.kind}`).")
    lines.append("")
    if cfg.answer_format == "grounded":
        lines.append("Answers are grounded traces that name what they look up before each time and end with "
                     "`→ <answer>`; the MusTBench answer is the text after the last `→` "
                     "(`must.data.traces.final_answer`).")
    else:
        lines.append("Answers are the MusTBench answer alone: `M:SS`, a letter, an interval `M:SS-M:SS`, or text.")
    return lines + [""]


def model_card(model, model_dir: Path, out: Path, merge_lora: bool) -> str:
    """The export's README.md: what the model is, what made it, how it scores, how to load it."""
    from must.eval import format_table, table_row

    cfg = model.cfg
    run_dir, record = _run_files(model_dir)
    base_llm = cfg.llm.source
    meta = ["---", "library_name: " + ("transformers" if merge_lora or cfg.llm.lora.r == 0 else "peft"),
            "tags: [must, music, audio, temporal-grounding, mustbench]"]
    from must.hub import is_repo_id

    if is_repo_id(base_llm):
        meta.append(f"base_model: {base_llm}")
    lines = [*meta, "---", "", f"# {out.name}", "",
             "A temporally grounded music audio-language model trained with "
             "must (the four-stage MusT recipe, judged on the MusTBench tasks). The folder is a complete must model "
             "(`MusicLALM.from_pretrained`, `must eval`); its LLM part also loads with transformers and peft alone.",
             "", "## Base models", "",
             f"- LLM: `{base_llm}`" + (f" (host LALM `{cfg.host.kind}`, its audio tower frozen)"
                                       if cfg.host.kind != "none" else ""),
             f"- music encoder backbone: `{cfg.encoder.backbone}`",
             "- LLM adapter: " + _adapter_text(cfg.llm.lora, merge_lora),
             ""]
    lines += ["## How it was made", ""]
    if record is not None:
        lines.append(f"Stage `{record.get('stage')}` (kind `{record.get('kind')}`) of a must run, "
                     f"{record.get('global_step')} steps, config hash `{record.get('config_hash')}`, "
                     f"status {record.get('status')}.")
        recipe = run_dir / "recipe.yaml"
        if recipe.is_file():
            lines += ["", "The recipe (as resolved by the run):", "", "```yaml", recipe.read_text().rstrip(), "```"]
    else:
        lines.append(f"Exported from `{model_dir}`; no run record beside it (`record.json`), so the recipe is unknown.")
    lines.append("")
    scores = _stage_scores(run_dir) if run_dir is not None else []
    if scores:
        lines += ["## Scores", "",
                  "MusTBench metrics (percent) of each evaluation the run wrote (`<stage>/eval/scores.json`; "
                  "the run's own test split, not the full benchmark):", "",
                  format_table([(name, table_row(s)) for name, s in scores], markdown=True), ""]
    lines += _format_section(cfg)
    lines += _loading_section(model, merge_lora)
    return "\n".join(lines) + "\n"


def _adapter_text(lora, merge_lora: bool) -> str:
    if lora.r == 0:
        return "none (the LLM's own weights were trained)"
    text = f"LoRA r={lora.r}, alpha={lora.alpha}, on {', '.join(lora.target_modules)}"
    return text + (" — merged into the weights of `llm/`" if merge_lora else " (`adapters/llm/`)")


def _loading_section(model, merge_lora: bool) -> list[str]:
    arch = (getattr(model.llm.config, "architectures", None) or [type(model.llm).__name__])[0]
    cls = "AutoModelForCausalLM" if model.cfg.host.kind == "none" else arch
    adapter = not merge_lora and model.cfg.llm.lora.r > 0
    lines = ["## Loading", "", "`OUT` is this folder. The whole audio model, with must:", "", "```python",
             "from must.models.lalm import MusicLALM", "", 'model = MusicLALM.from_pretrained("OUT")',
             "# waveform: a mono float array at 16 kHz, the whole track",
             'answers = model.generate([waveform], ["When does the bass first appear?"], sample_rate=16000)',
             "```", "", "The LLM part with transformers (and peft) alone: it reads text (the audio tokens come from "
             "must's encoder), with the time tokens above in its vocabulary:", "", "```python"]
    if adapter and cls == "AutoModelForCausalLM":
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("OUT/adapters/llm")',
                  'tokenizer = AutoTokenizer.from_pretrained("OUT/adapters/llm")']
    else:
        lines += (["from peft import PeftModel"] if adapter else []) + [
            f"from transformers import AutoTokenizer, {cls}", "",
            f'model = {cls}.from_pretrained("OUT/llm")', 'tokenizer = AutoTokenizer.from_pretrained("OUT/llm")']
        if adapter:
            lines.append('model = PeftModel.from_pretrained(model, "OUT/adapters/llm")')
    lines += ["```", "", "From the Hub (after `must export ... --push REPO_ID`):", "", "```python"]
    lines += (["from peft import PeftModel"] if adapter else []) + [
        f"from transformers import AutoTokenizer, {cls}", "",
        f'model = {cls}.from_pretrained("REPO_ID", subfolder="llm")',
        'tokenizer = AutoTokenizer.from_pretrained("REPO_ID", subfolder="llm")']
    if adapter:
        lines.append('model = PeftModel.from_pretrained(model, "REPO_ID", subfolder="adapters/llm")')
    lines += ["```", "", "or `huggingface_hub.snapshot_download(\"REPO_ID\")` and `MusicLALM.from_pretrained` on "
              "the folder it returns.", ""]
    return lines


# ------------------------------------------------------------------------------------------ push


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def push_folder(out: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload ``out`` to the Hub model repo ``repo_id`` (created when missing); returns the commit URL.

    The uploaded adapter config names the repo as its base (``subfolder="llm"`` there), never this machine's
    path, and the uploaded card's snippets name the repo; the local files are left as they were. Offline or any Hub failure is a MustError saying nothing was lost."""
    from huggingface_hub import HfApi

    from must.hub import is_repo_id

    out = Path(out)
    if not is_repo_id(repo_id):
        raise MustError(f"--push {repo_id!r}: a Hub repository id is 'user/name' or 'org/name'")
    retry = f"{out} is complete; upload it later with `hf upload {repo_id} {out}` or `must export` again with --push"
    if _offline():
        raise MustError(f"cannot push to the Hugging Face Hub: HF_HUB_OFFLINE is set, so nothing was uploaded. {retry}")
    originals = {p: p.read_text() for p in (out / ADAPTER / "adapter_config.json", out / "README.md") if p.is_file()}
    uploaded = {p: text.replace('"REPO_ID"', f'"{repo_id}"') for p, text in originals.items()}  # the card's snippets
    config_file = out / ADAPTER / "adapter_config.json"
    if config_file in originals:
        uploaded[config_file] = json.dumps({**json.loads(originals[config_file]), "base_model_name_or_path": repo_id},
                                           indent=2)
    try:
        for path, text in uploaded.items():
            path.write_text(text)
        api = HfApi()
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(out), repo_type="model",
                                 commit_message=f"must export of {out.name}")
    except MustError:
        raise
    except Exception as exc:  # noqa: BLE001  no network, no token, no permission: all said the same way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MustError(f"pushing {out} to {repo_id} failed ({type(exc).__name__}: {first}); log in with "
                        f"`hf auth login` if the Hub refused you. {retry}") from None
    finally:
        for path, text in originals.items():
            path.write_text(text)
    return str(getattr(info, "commit_url", info))


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``must export``."""
    parser.add_argument("model_dir", help="a saved model folder (a stage's OUTPUT_DIR/<stage>/model)")
    parser.add_argument("out", help="new folder to write the export to")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold the LoRA adapters into the weights: llm/ is then a plain transformers model")
    parser.add_argument("--push", metavar="REPO_ID", help="then upload the folder to this Hugging Face Hub model repo")
    parser.add_argument("--private", action="store_true", help="with --push: create the repo private")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model folder run the modelling code shipped in it (only a folder you trust)")


def handler(args: argparse.Namespace) -> int:
    """``must export``: write the folder, say how to load it, push when asked."""
    if args.push:  # said before minutes of exporting, not after
        from must.hub import is_repo_id

        if not is_repo_id(args.push):
            raise MustError(f"--push {args.push!r}: a Hub repository id is 'user/name' or 'org/name'")
    out = export_model(args.model_dir, args.out, args.merge_lora, args.trust_remote_code)
    print(f"wrote {out} (model card: {out / 'README.md'})")
    if (out / ADAPTER).is_dir():
        print(f"  peft:         AutoPeftModelForCausalLM.from_pretrained('{out / ADAPTER}')")
    print(f"  transformers: from_pretrained('{out / 'llm'}')" + ("  (LoRA merged)" if args.merge_lora else ""))
    if args.push:
        print(f"pushed: {push_folder(out, args.push, args.private)}")
    return 0
