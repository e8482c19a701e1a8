"""The notebooks run clean, top to bottom, in fast mode (MUST_FAST=1), on a kernel of this interpreter."""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec that runs this very interpreter (the venv's), found through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "must-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "must test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MUST_FAST", "1")
    monkeypatch.setenv("MUST_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return "must-test"


def run(name: str, kernel: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "rewards.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")


def test_rewards_notebook_runs(kernel, tmp_path):
    nb = run("rewards.ipynb", kernel)
    assert len(outputs(nb, "image/png")) >= 3  # two answer timelines and the reward-vs-error figure
    assert (tmp_path / "out" / "reward_vs_error.png").stat().st_size > 10_000
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "logged: {'must_reward/accuracy'" in text


def test_quickstart_notebook_runs_the_tiny_recipe(kernel, tmp_path):
    nb = run("quickstart.ipynb", kernel)
    assert outputs(nb, "text/html")  # the audio player and the tables
    out = tmp_path / "out"
    for png in ("track.png", "answer_0.png", "transitions.png"):
        assert (out / png).stat().st_size > 5_000
    records = [json.loads(p.read_text()) for p in (out / "run").glob("*/record.json")]
    assert records and all(r["status"] == "finished" and r["global_step"] == 1 for r in records)
