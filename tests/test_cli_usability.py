"""The CLI answers fast and explains itself; eval's leaderboard ships with the package; synth's layout."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from must import __version__
from must.cli import COMMANDS, build_parser
from must.data.export import remove_earlier_synth, split_counts
from must.eval import _load_leaderboard, default_audio_dir
from tests._fixtures import shared_fixture

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    missing = [f"{name} {a.dest}" for name, sub in _subparsers(parser).items() for a in sub._actions
               if not a.help]
    assert missing == []
    assert len(_subparsers(parser)) == len(COMMANDS) == 7  # run validate synth score eval plan export


def test_subcommand_help_shows_defaults():
    help_text = " ".join(_subparsers(build_parser())["eval"].format_help().split())
    assert "(default: 32)" in help_text  # --max-new-tokens


def test_python_m_must_version():
    out = subprocess.run([sys.executable, "-m", "must", "--version"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0
    assert out.stdout.strip() == f"must {__version__}"


def test_parser_does_not_import_torch():
    code = ("import sys, must.cli; must.cli.build_parser(); "
            "print(','.join(m for m in ('torch', 'transformers', 'lightning', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_validate_does_not_import_torch():
    """Built-in stage kinds are checked against their light ``Options`` modules, not the stage modules."""
    code = ("import sys; from must.cli import main; rc = main(['validate', 'recipes/tiny.yaml']); "
            "print(rc, ','.join(m for m in ('torch', 'lightning', 'transformers', 'must.stages.sft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "0 "


def test_leaderboard_is_package_data():
    rows = _load_leaderboard(None)
    must7b = next(r for r in rows if r["model"] == "MusT")
    assert must7b["overall"] == 44.1
    assert rows == json.loads((ROOT / "must/data/published_leaderboard.json").read_text(encoding="utf-8"))


def test_packaged_leaderboard_is_the_fixtures_table():
    fixture = shared_fixture("mustbench_demo", "published_leaderboard.json")
    assert _load_leaderboard(None) == json.loads(fixture.read_text(encoding="utf-8"))


def test_leaderboard_file_missing_is_an_error(tmp_path):
    from must.errors import MustError

    with pytest.raises(MustError, match="leaderboard file not found"):
        _load_leaderboard(tmp_path / "nope.json")


@pytest.mark.parametrize("n", range(1, 13))
def test_split_counts_always_train(n):
    counts = split_counts(n)
    assert counts["train"] >= 1 and sum(counts.values()) == n
    if n >= 2:
        assert counts["test"] >= 1


def test_default_audio_dir(tmp_path):
    assert default_audio_dir(tmp_path / "mustbench.parquet") == tmp_path
    (tmp_path / "audio").mkdir()
    assert default_audio_dir(tmp_path / "mustbench.parquet") == tmp_path / "audio"


def test_rerun_removes_only_own_files(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "audio").mkdir()
    for tid in ("a", "b"):
        (tmp_path / "labels" / f"{tid}.json").write_text("{}")
        (tmp_path / "audio" / f"{tid}.flac").write_bytes(b"x")
    (tmp_path / "mustbench.parquet").write_bytes(b"x")
    (tmp_path / "audio" / "mine.wav").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("keep")
    remove_earlier_synth(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["audio/mine.wav", "notes.txt"]


def _parquet(path, splits):
    import pandas as pd

    rows = [{"id": f"q{i}", "track_id": f"t{i}", "task": "LTR", "category": "c", "qa_type": "change",
             "question": "?", "answer": "A", "answers": ["A"], "split": s, "duration": 30.0}
            for i, s in enumerate(splits)]
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def test_score_split_limit_and_unknown_ids(tmp_path, capsys):
    from must.cli import main

    ref = _parquet(tmp_path / "ref.parquet", ["train", "train", "test", "test", "test"])
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": f"q{i}", "prediction": "A"}) + "\n" for i in range(5)))
    assert main(["score", "--predictions", str(pred), "--references", str(ref), "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "scoring split 'test': 3 of 5 row(s)" in out
    assert "2 prediction id(s) not among the scored rows, ignored: q0, q1" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["LTR"]["accuracy"] == 100.0 and [r["id"] for r in scores["rows"]] == ["q2", "q3", "q4"]
    assert scores["unknown_predictions"] == ["q0", "q1"]
    assert main(["score", "--predictions", str(pred), "--references", str(ref), "--split", "all", "--limit", "2",
                 "--out", str(tmp_path / "s2.json")]) == 0
    assert "the first 2 (--limit)" in capsys.readouterr().out
    assert [r["id"] for r in json.loads((tmp_path / "s2.json").read_text())["rows"]] == ["q0", "q1"]
    assert main(["score", "--predictions", str(pred), "--references", str(ref), "--split", "val"]) == 2
    assert "no rows in split 'val'" in capsys.readouterr().err


def test_eval_without_any_audio_exits_2(tmp_path, capsys):
    from must.cli import main

    ref = _parquet(tmp_path / "mustbench.parquet", ["test", "test"])
    (tmp_path / "model").mkdir()
    rc = main(["eval", str(tmp_path / "model"), "--data", str(ref), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "no audio in" in capsys.readouterr().err


def test_zero_rows_lists_rows_with_nothing_right():
    from must.eval import zero_rows

    rows = [{"id": "a", "task": "LTR", "parsed": "A", "ltr": 1.0, "reason": None},
            {"id": "b", "task": "LTR", "parsed": "B", "ltr": 0.0, "reason": None},
            {"id": "c", "task": "TSG", "parsed": 12.0, "tsg_onset": 0.0, "reason": "no prediction"}]
    assert zero_rows({"rows": rows}) == ["b", "c"]
