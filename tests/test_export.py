"""``must export``: the LLM part loads with transformers/peft alone and gives must's own logits (time tokens
included), ``--merge-lora`` writes a plain transformers model, a model card says what made it and how to
load it, and ``--push`` uploads with huggingface_hub (offline: a clear error, nothing lost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._tiny import TINY_MODEL

# time tokens (a forward hook ties their logits to their input embeddings) and grounded answers, as tiny.yaml
MODEL = {**TINY_MODEL, "time_embedding": {"kind": "tokens", "max_seconds": 120.0}, "answer_format": "grounded"}
TEXT = "bass enters 0:12 → 0:12, drums leave 1:05"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder laid out as the runner writes it: recipe.yaml, sft/record.json, sft/eval/scores.json and
    sft/model, the model with non-zero LoRA (a fresh adapter adds exactly 0 and would prove nothing)."""
    from must.config import dump_yaml, load_recipe
    from must.eval import score_predictions, write_json
    from must.models.lalm import MusicLALM

    run = tmp_path_factory.mktemp("runs") / "tiny"
    torch.manual_seed(0)
    model = MusicLALM.from_config(MODEL)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(run / "sft" / "model")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
    (run / "recipe.yaml").write_text(dump_yaml(load_recipe(recipe)))
    (run / "sft" / "record.json").write_text(json.dumps(
        {"stage": "sft", "kind": "sft", "status": "finished", "global_step": 240, "config_hash": "c0ffee12"}))
    refs = [{"id": "q1", "track_id": "t", "task": "TSG", "qa_type": "onset", "question": "When?", "answer": "0:12",
             "answers": ["0:12"], "duration": 60.0},
            {"id": "q2", "track_id": "t", "task": "LTR", "qa_type": "", "question": "Which?", "answer": "B",
             "answers": ["B"], "duration": 60.0}]
    write_json(run / "sft" / "eval" / "scores.json", score_predictions({"q1": "0:13", "q2": "C"}, refs))
    return run


def _must_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from must.models.lalm import MusicLALM

    model = MusicLALM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model.llm(input_ids=ids).logits


def _ids(model_dir: Path) -> tuple[torch.Tensor, int]:
    """Token ids of TEXT as must writes it (its times as time tokens) and the first time-token id."""
    from must.models.lalm import MusicLALM

    model = MusicLALM.from_pretrained(model_dir)
    return torch.tensor([model.text_ids(TEXT)]), model.time_embedding.first


def test_export_loads_with_auto_peft_and_gives_musts_logits(run_dir, tmp_path, capsys):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from must.cli import main

    model_dir = run_dir / "sft" / "model"
    ids, first = _ids(model_dir)
    assert (ids >= first).sum() == 3  # the three times are time tokens
    expected = _must_logits(model_dir, ids)
    # the saved folder alone: AutoPeft refuses it, and peft by hand gets the time tokens' logits wrong
    with pytest.raises(ValueError):
        AutoPeftModelForCausalLM.from_pretrained(str(model_dir / "adapters" / "llm"))
    raw = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir / "llm")),
                                    str(model_dir / "adapters" / "llm")).eval()
    with torch.no_grad():
        assert not torch.allclose(raw(input_ids=ids).logits[..., first:], expected[..., first:], atol=1e-3)

    out = tmp_path / "export"
    assert main(["export", str(model_dir), str(out)]) == 0
    assert "AutoPeftModelForCausalLM.from_pretrained" in capsys.readouterr().out
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out / "adapters" / "llm")).eval()
    with torch.no_grad():
        got = peft_model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.argmax(-1)[0, 3:].ne(expected.argmax(-1)[0, 3:]).sum() == 0
    # the card's Hub snippet (subfolders of one repo), here on the local folder
    base = AutoModelForCausalLM.from_pretrained(str(out), subfolder="llm")
    by_subfolder = PeftModel.from_pretrained(base, str(out), subfolder="adapters/llm").eval()
    with torch.no_grad():
        torch.testing.assert_close(by_subfolder(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    # the exported tokenizer has the time tokens, with must's ids, and renders them back as they were written
    tok = AutoTokenizer.from_pretrained(str(out / "llm"))
    assert tok.convert_tokens_to_ids("<|t12|>") == first + 12
    assert tok("bass enters<|t12|>", add_special_tokens=False).input_ids[-1] == first + 12
    config = json.loads((out / "adapters" / "llm" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and Path(config["base_model_name_or_path"]) == (out / "llm").resolve()
    # and the export is still a must model, with must's logits
    torch.testing.assert_close(_must_logits(out, ids), expected, atol=1e-6, rtol=1e-6)


def test_merge_lora_writes_a_plain_transformers_model(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from must.export import export_model

    model_dir = run_dir / "sft" / "model"
    ids, _ = _ids(model_dir)
    out = export_model(model_dir, tmp_path / "merged", merge_lora=True)
    assert not (out / "adapters").exists()
    plain = AutoModelForCausalLM.from_pretrained(str(out / "llm")).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        got = plain(input_ids=ids).logits
    torch.testing.assert_close(got, _must_logits(model_dir, ids), atol=1e-4, rtol=1e-4)
    assert json.loads((out / "must_config.json").read_text())["model"]["llm"]["lora"]["r"] == 0


def test_model_card_names_bases_recipe_scores_format_and_loading(run_dir, tmp_path):
    from must.eval import format_table, table_row
    from must.export import export_model

    out = export_model(run_dir / "sft" / "model", tmp_path / "card")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    assert "- LLM: `tiny`" in card and "- music encoder backbone: `builtin`" in card
    assert "LoRA r=4, alpha=8, on q_proj, k_proj, v_proj, o_proj (`adapters/llm/`)" in card
    assert "Stage `sft` (kind `sft`) of a must run, 240 steps, config hash `c0ffee12`" in card
    assert "name: tiny" in card and "kind: grpo" in card  # the run's recipe.yaml, whole
    scores = json.loads((run_dir / "sft" / "eval" / "scores.json").read_text())
    assert format_table([("sft/eval", table_row(scores))], markdown=True) in card
    assert "`<|t0|>` … `<|t120|>`: `<|tN|>` is N × 1 s" in card
    assert "the text after the last `→`" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("OUT/adapters/llm")' in card


def test_a_model_without_a_run_record_says_its_recipe_is_unknown(tmp_path):
    from must.export import export_model
    from must.models.lalm import MusicLALM

    folder = MusicLALM.from_config({**TINY_MODEL, "llm": {**TINY_MODEL["llm"], "lora": {"r": 0}}}).save_pretrained(
        tmp_path / "loose")
    card = (export_model(folder, tmp_path / "out") / "README.md").read_text()
    assert "no run record beside it" in card and "## Scores" not in card
    assert card.startswith("---\nlibrary_name: transformers\n") and 'AutoModelForCausalLM.from_pretrained("OUT/llm")' in card


def test_export_refuses_a_non_empty_folder(run_dir, tmp_path, capsys):
    from must.cli import main

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir / "sft" / "model"), str(tmp_path / "busy")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_push_offline_is_a_clear_error_and_keeps_the_export(run_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from must.cli import main

    calls = []
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "offline"
    assert main(["export", str(run_dir / "sft" / "model"), str(out), "--push", "me/must-tiny"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set, so nothing was uploaded" in err and f"hf upload me/must-tiny {out}" in err
    assert calls == [] and (out / "README.md").is_file()
    assert main(["export", str(run_dir / "sft" / "model"), str(tmp_path / "x"), "--push", "not a repo"]) == 2
    assert "a Hub repository id is 'user/name'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_push_uploads_the_folder_with_the_repo_as_the_adapters_base(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from must.export import export_model, push_folder

    out = export_model(run_dir / "sft" / "model", tmp_path / "pushed")
    local_config = (out / "adapters" / "llm" / "adapter_config.json").read_text()
    seen = {}

    def upload_folder(self, **kwargs):
        seen.update(kwargs)
        seen["uploaded_config"] = json.loads((Path(kwargs["folder_path"]) / "adapters/llm/adapter_config.json").read_text())
        seen["uploaded_card"] = (Path(kwargs["folder_path"]) / "README.md").read_text()
        return type("Info", (), {"commit_url": "https://huggingface.co/me/must-tiny/commit/abc"})()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: seen.setdefault("created", (repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert push_folder(out, "me/must-tiny", private=True) == "https://huggingface.co/me/must-tiny/commit/abc"
    assert seen["created"] == ("me/must-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert seen["repo_id"] == "me/must-tiny" and seen["repo_type"] == "model" and seen["folder_path"] == str(out)
    assert seen["uploaded_config"]["base_model_name_or_path"] == "me/must-tiny"  # never this machine's path
    assert 'PeftModel.from_pretrained(model, "me/must-tiny", subfolder="adapters/llm")' in seen["uploaded_card"]
    assert (out / "adapters" / "llm" / "adapter_config.json").read_text() == local_config  # restored
    assert '"REPO_ID"' in (out / "README.md").read_text()


def test_push_failure_names_the_repo_and_how_to_retry(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from must.errors import MustError
    from must.export import export_model, push_folder

    out = export_model(run_dir / "sft" / "model", tmp_path / "refused")

    def refuse(self, repo_id, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(MustError, match=r"pushing .*refused to me/must-tiny failed \(ConnectionError: Failed to "
                                        r"resolve 'huggingface.co'\).*hf auth login.*hf upload me/must-tiny"):
        push_folder(out, "me/must-tiny")
