"""benchmarks/curves.py: stages in run order, training metrics averaged per step range, validation rows as logged."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("curves", ROOT / "benchmarks" / "curves.py")
curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(curves)


def _stage(run: Path, name: str, started: str, rows: list[str]) -> None:
    (run / name / "logs").mkdir(parents=True)
    (run / name / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / name / "record.json").write_text(json.dumps({"started_at": started}))


@pytest.fixture
def run(tmp_path):
    # "b_sft" ran first although it sorts after "a_grpo" by name.
    _stage(tmp_path, "b_sft", "2026-12-02T10:00:00", [
        "epoch,step,train/loss,train/questions,val/tsg_onset",
        "0,0,4.0,20,", "0,1,2.0,20,", "0,2,1.0,20,", "0,3,3.0,20,", "0,3,,,25.0"])
    _stage(tmp_path, "a_grpo", "2026-12-02T11:00:00", ["epoch,step,reward", "0,0,0.5", "0,1,0.7"])
    (tmp_path / "not_a_stage").mkdir()
    return tmp_path


def test_stages_in_run_order_and_bins_hand_computed(run):
    assert [d.name for d in curves.stage_dirs(run)] == ["b_sft", "a_grpo"]
    steps, cols = curves.read_log(run / "b_sft" / "logs" / "metrics.csv")
    assert "train/questions" not in cols  # bookkeeping, not a curve
    assert cols["val/tsg_onset"] == [(3, 25.0)]
    md = curves.stage_markdown("b_sft", cols, max(steps), bins=1)
    # 4 logged steps > 2 * bins: one range, the mean of all (4 + 2 + 1 + 3) / 4
    assert md[2:5] == ["| steps | train/loss |", "|---|---|", "| 0–3 | 2.500 |"]
    # at most 2 * bins logged steps: one row each, as logged
    assert curves.stage_markdown("b_sft", cols, max(steps), bins=2)[4:8] == [
        "| 0 | 4.000 |", "| 1 | 2.000 |", "| 2 | 1.000 |", "| 3 | 3.000 |"]
    const = curves.stage_markdown("g", {"refills": [(0, 1.0), (5, 1.0)], "reward": [(0, 0.5), (5, 0.7)]}, 5, 6)
    assert "refills" not in const[2] and const[-2] == "Constant over the run: `refills` 1.000."
    assert "| 3 | 25.0 |" in md


def test_binned_means_per_range():
    pts = [(0, 4.0), (1, 2.0), (2, 1.0), (3, 3.0)]
    assert curves.binned(pts, [-1, 1, 3]) == [3.0, 2.0]
    assert curves.binned(pts, [-1, 3, 5]) == [2.5, None]


def test_writes_markdown_and_plot(run, monkeypatch):
    md, png = run / "curves.md", run / "curves.png"
    monkeypatch.setattr("sys.argv", ["curves.py", str(run), "--bins", "2", "--md", str(md), "--png", str(png)])
    assert curves.main() == 0
    text = md.read_text()
    assert text.index("### b_sft") < text.index("### a_grpo")
    assert png.stat().st_size > 1000


def test_a_folder_without_logs_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["curves.py", str(tmp_path)])
    with pytest.raises(SystemExit):
        curves.main()
    assert str(tmp_path) in capsys.readouterr().err
