"""Security: checkpoints are data (``weights_only``), remote code runs only when the recipe asks, and no
code runs from YAML except a stage given explicitly by dotted path."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import torch

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
        assert "trust_remote_code" in ast.unparse(value) or ast.unparse(value) == "remote", f"{where}:{node.lineno}"
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

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: toy
        output_dir: {tmp_path / "out"}
        logger: {{kind: none}}
        stages:
          - name: a
            kind: tests._stages:Producer
            trainer: {{max_steps: 4, enable_progress_bar: false}}
    """))
    ckpt = tmp_path / "out" / "a" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"global_step": 2, "state_dict": {}, "payload": _Payload(marker)}, ckpt)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        run_recipe(load_recipe(recipe), RunOptions(resume=True))
    assert not marker.exists()
