"""Hub ids where a recipe names a model folder: read from the local Hugging Face cache, never downloaded;
a missing id says which one and how to fetch it; remote code still runs only when the recipe grants it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._hub import cached_snapshot
from tests._tiny import TINY_MODEL

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
TINY_LLM = {k: TINY_MODEL["llm"][k] for k in ("hidden_size", "layers", "heads", "kv_heads", "intermediate_size")}


def _save_tiny_llm(folder: Path, host_kind: str = "none"):
    """A tiny random LLM (or host LALM) and its tokenizer saved from config into ``folder``; returns the model."""
    from must.models.config import HostConfig, LLMConfig
    from must.models.llm import build_llm

    torch.manual_seed(1)
    llm, tok = build_llm(LLMConfig(**TINY_LLM), HostConfig(kind=host_kind))
    llm.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return llm


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_loads_the_cached_snapshot_and_is_kept_in_the_saved_config(hub_cache, tmp_path):
    from must.models.lalm import MusicLALM

    saved = _save_tiny_llm(cached_snapshot(hub_cache, "tiny-org/tiny-lm"))
    model = MusicLALM.from_config({**TINY_MODEL, "llm": {"source": "tiny-org/tiny-lm"}})
    for name, tensor in saved.state_dict().items():  # the snapshot's weights, not a fresh random model
        assert torch.equal(model.llm.state_dict()[name], tensor), name
    folder = model.save_pretrained(tmp_path / "model")
    assert json.loads((folder / "must_config.json").read_text())["model"]["llm"]["source"] == "tiny-org/tiny-lm"
    # the saved model is self-contained: it loads with the cache gone
    for path in sorted(hub_cache.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    again = MusicLALM.from_pretrained(folder)
    assert torch.equal(again.llm.lm_head.weight, saved.lm_head.weight)


def test_hf_home_is_respected_when_hf_hub_cache_is_unset(tmp_path, monkeypatch):
    from must.hub import hub_cache, resolve_folder

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = cached_snapshot(tmp_path / "home" / "hub", "org/encoder")
    assert hub_cache() == tmp_path / "home" / "hub"
    assert resolve_folder("org/encoder", "model.encoder.backbone") == snapshot
    # an existing folder is a folder, whatever its name looks like; a missing non-id path is left to the caller
    (tmp_path / "org" / "encoder").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_folder("org/encoder", "k") == Path("org/encoder")
    assert resolve_folder("./no/such", "k") == Path("./no/such")


def test_a_hub_id_for_the_host_llm_and_the_encoder_backbone(hub_cache, tmp_path):
    """``model.llm.source`` naming a cached Qwen2-Audio host and ``model.encoder.backbone`` a cached HuBERT."""
    from transformers import HubertConfig, HubertModel

    from must.models.lalm import MusicLALM

    host = _save_tiny_llm(cached_snapshot(hub_cache, "Qwen/Qwen2-Audio-7B-Instruct"), "qwen2_audio")
    hubert = HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                                      conv_kernel=(10, 4), num_conv_pos_embeddings=8))
    hubert.save_pretrained(str(cached_snapshot(hub_cache, "org/tiny-hubert")))
    cfg = {**TINY_MODEL, "host": {"kind": "qwen2_audio"}, "llm": {"source": "Qwen/Qwen2-Audio-7B-Instruct"},
           "encoder": {"backbone": "org/tiny-hubert", "lora": {"r": 0}}}
    model = MusicLALM.from_config(cfg)
    assert type(model.llm).__name__ == "Qwen2AudioForConditionalGeneration"
    assert torch.equal(model.llm.lm_head.weight, host.lm_head.weight)
    w = model.encoder.backbone.model.feature_extractor.conv_layers[0].conv.weight
    assert torch.equal(w, hubert.feature_extractor.conv_layers[0].conv.weight)
    assert model.cfg.encoder.backbone == "org/tiny-hubert"


def test_must_plan_reads_a_cached_hub_id(hub_cache, capsys):
    from must.cli import main

    _save_tiny_llm(cached_snapshot(hub_cache, "Qwen/Qwen2-Audio-7B-Instruct"), "qwen2_audio")
    code = main(["plan", str(RECIPE), "model.llm.source=Qwen/Qwen2-Audio-7B-Instruct", "model.host.kind=qwen2_audio"])
    out = capsys.readouterr().out
    assert code == 0 and "grpo" in out


def test_a_missing_hub_id_says_which_and_how_to_fetch_it(hub_cache, capsys):
    from must.cli import main

    code = main(["plan", str(RECIPE), "model.llm.source=Qwen/Qwen2-Audio-7B-Instruct", "model.host.kind=qwen2_audio"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.llm.source: 'Qwen/Qwen2-Audio-7B-Instruct' is no local folder" in err
    assert str(hub_cache) in err
    assert "`hf download Qwen/Qwen2-Audio-7B-Instruct`" in err
    assert "`huggingface-cli download Qwen/Qwen2-Audio-7B-Instruct`" in err
    assert "HF_HUB_CACHE" in err and "model.llm.source=DIR" in err
    assert "folder not found" not in err


def test_a_missing_encoder_hub_id_names_its_key(hub_cache):
    from must.errors import MustError
    from must.models.lalm import MusicLALM

    with pytest.raises(MustError, match=r"model.encoder.backbone: 'm-a-p/MERT-v1-95M' is no local folder.*"
                                        r"hf download m-a-p/MERT-v1-95M"):
        MusicLALM.from_config({**TINY_MODEL, "encoder": {"backbone": "m-a-p/MERT-v1-95M"}})


def test_remote_code_in_a_cached_snapshot_runs_only_when_the_recipe_grants_it(hub_cache, tmp_path):
    from must.models.lalm import MusicLALM

    snapshot = cached_snapshot(hub_cache, "someone/shipped-code")
    _save_tiny_llm(snapshot)
    marker = tmp_path / "ran"
    (snapshot / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2Config\n\nclass EvilConfig(Qwen2Config):\n    pass\n")
    config = json.loads((snapshot / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (snapshot / "config.json").write_text(json.dumps(config))
    cfg = {**TINY_MODEL, "llm": {**TINY_MODEL["llm"], "source": "someone/shipped-code"}}
    model = MusicLALM.from_config(cfg)  # not granted: transformers' own Qwen2 classes, the file never imported
    assert type(model.llm.config).__name__ == "Qwen2Config" and not marker.exists()
    # granted, the shipped code runs (EvilConfig is no causal-LM config, which is what stops it here)
    with pytest.raises(ValueError, match=r"Unrecognized configuration class .*configuration_evil\.EvilConfig"):
        MusicLALM.from_config({**cfg, "llm": {**cfg["llm"], "trust_remote_code": True}})
    assert marker.read_text() == "ran"
