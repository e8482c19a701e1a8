"""Security: checkpoints are data (``weights_only``), remote code runs only when the user asks (recipe or
CLI flag, never a loaded folder), and no code runs from YAML except a stage given explicitly by dotted path."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests._fixtures import shared_fixture
from tests._stages import toy_recipe

PACKAGE = Path(__file__).resolve().parents[1] / "must"


def _calls(name_test):
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and name_test(node):
                yield path.relative_to(PACKAGE.parent), node


def _dotted(func: ast.AST) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_dotted(func.value)}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else ""


def _kw(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_every_torch_load_and_resume_is_weights_only():
    loads = list(_calls(lambda n: _dotted(n.func) in ("torch.load", "load") and "torch" in _dotted(n.func)))
    for where, node in loads:
        value = _kw(node, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{where}:{node.lineno}"
    fits = list(_calls(lambda n: _dotted(n.func).endswith(".fit") and _kw(n, "ckpt_path") is not None))
    assert fits, "the runner resumes through trainer.fit(ckpt_path=...)"
    for where, node in fits:
        value = _kw(node, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{where}:{node.lineno}"


def test_trust_remote_code_only_from_config():
    uses = list(_calls(lambda n: _kw(n, "trust_remote_code") is not None))
    assert len(uses) >= 6  # encoder, LLM, tokenizer, configs, plan
    for where, node in uses:
        value = _kw(node, "trust_remote_code")
        assert not isinstance(value, ast.Constant), f"{where}:{node.lineno} hard-codes trust_remote_code"
        text = ast.unparse(value)
        assert "trust_remote_code" in text or text == "remote" or text.startswith("trusted_parts("), f"{where}:{node.lineno}"
    from must.models.config import EncoderConfig, LLMConfig

    assert EncoderConfig().trust_remote_code is False and LLMConfig().trust_remote_code is False


def test_no_code_from_yaml():
    bad = list(_calls(lambda n: _dotted(n.func) in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "pickle.load",
                                                     "pickle.loads", "yaml.full_load")))
    assert not bad, [f"{w}:{n.lineno}" for w, n in bad]


class _Payload:
    """Unpickling this runs code (it touches a file): what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_code_is_refused_on_resume(tmp_path):
    from must.config import load_recipe
    from must.runner import RunOptions, run_recipe

    recipe = toy_recipe(tmp_path, {"name": "a", "kind": "tests._stages:Producer", "trainer": {"max_steps": 4}})
    ckpt = tmp_path / "out" / "a" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"global_step": 2, "state_dict": {}, "payload": _Payload(marker)}, ckpt)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_recipe(load_recipe(recipe), RunOptions(resume=True))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- remote code


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from must.models.lalm import MusicLALM
    from tests._tiny import TINY_MODEL

    folder = tmp_path_factory.mktemp("model") / "model"
    MusicLALM.from_config(TINY_MODEL).save_pretrained(folder)
    return folder


def _carrying_code(saved: Path, target: Path, ask: bool) -> Path:
    """A copy of a model folder whose LLM config maps AutoConfig to a file beside it that writes a marker
    when imported (what a downloaded folder could ship); ``ask`` sets the folder's own trust_remote_code."""
    shutil.copytree(saved, target)
    marker = target.parent / f"{target.name}.ran"
    (target / "llm" / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2Config\n\nclass EvilConfig(Qwen2Config):\n    pass\n")
    config = json.loads((target / "llm" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (target / "llm" / "config.json").write_text(json.dumps(config))
    if ask:
        meta = json.loads((target / "must_config.json").read_text())
        meta["model"]["llm"]["trust_remote_code"] = True
        (target / "must_config.json").write_text(json.dumps(meta))
    return marker


def test_a_model_folder_cannot_grant_itself_remote_code(saved_model, tmp_path, capsys):
    from must.cli import main
    from must.errors import MustError
    from must.models.lalm import MusicLALM

    folder = tmp_path / "downloaded"
    marker = _carrying_code(saved_model, folder, ask=True)
    with pytest.raises(MustError, match=r"must_config.json asks to run .*model.llm.trust_remote_code.*--trust-remote-code"):
        MusicLALM.from_pretrained(folder)
    with pytest.raises(MustError, match="model.llm.trust_remote_code"):
        MusicLALM.from_pretrained(folder, trust_remote_code=["encoder"])  # trusting the encoder is not the LLM
    fixture = shared_fixture("mustbench_demo", "mustbench_demo.parquet")
    assert main(["eval", str(folder), "--data", str(fixture), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--trust-remote-code" in err and "Traceback" not in err
    assert not marker.exists()
    # The control: granted by the caller, the folder's code does run (so the refusal above is what kept it out).
    with pytest.raises(ValueError, match=r"Unrecognized configuration class .*configuration_evil\.EvilConfig"):
        MusicLALM.from_pretrained(folder, trust_remote_code=True)  # EvilConfig is no causal-LM config
    assert marker.read_text() == "ran"


def test_a_folder_that_does_not_ask_never_runs_its_code(saved_model, tmp_path):
    from must.models.lalm import MusicLALM

    marker = _carrying_code(saved_model, tmp_path / "quiet", ask=False)
    model = MusicLALM.from_pretrained(tmp_path / "quiet")  # transformers' own Qwen2 classes, not the shipped file
    assert type(model.llm.config).__name__ == "Qwen2Config" and not marker.exists()


def test_an_init_from_folder_gets_only_what_the_recipe_grants():
    from must.models.config import ModelConfig
    from must.stages.common import trusted_parts

    cfg = ModelConfig()
    assert trusted_parts(cfg) == []
    cfg.encoder.trust_remote_code = True
    assert trusted_parts(cfg) == ["encoder"]
