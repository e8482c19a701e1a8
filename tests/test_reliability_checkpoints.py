"""Checkpoints survive what kills runs: a crash in the middle of a save, a full disk, a NaN loss.

The toy linear stage of the foundation tests (``tests._stages``) keeps these fast; the checkpoint
writing is the runner's and Lightning's, the same for every stage.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import textwrap
from pathlib import Path

import pytest
import torch

from must.cli import main
from must.config import load_recipe
from must.errors import MustError
from must.runner import RunOptions, run_recipe
from tests._stages import toy_recipe


def _recipe(tmp_path: Path, kind: str = "tests._stages:Producer", steps: int = 10, every: int = 2) -> Path:
    return toy_recipe(tmp_path, {"name": "a", "kind": "tests._stages:Producer", "trainer": {"max_steps": 3}},
                      {"name": "b", "kind": kind, "init_from": "a",
                       "trainer": {"max_steps": steps, "checkpoint_every_n_steps": every}})


def _ckpt_step(stage_dir: Path) -> int:
    return int(torch.load(stage_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])


class _FullDisk:
    """A disk that fills up during stage b's ``fail_on``-th checkpoint save: that write puts half its bytes
    down and raises ENOSPC; with ``stays_full`` every later write below ``root`` fails the same way (the
    record written on the failure path too)."""

    def __init__(self, root: Path, fail_on: int, stays_full: bool):
        from lightning.fabric.plugins.io import torch_io

        self.root, self.fail_on, self.stays_full = str(root), fail_on, stays_full
        self.saves, self.full = 0, False
        self.real_save, self.real_open = torch_io._atomic_save, builtins.open

    def save(self, checkpoint, path):
        self.saves += "/b/checkpoints/" in str(path)
        if self.saves < self.fail_on or "/b/checkpoints/" not in str(path):
            return self.real_save(checkpoint, path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with self.real_open(path, "wb") as fh:
            fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        self.full = self.stays_full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def open(self, file, mode="r", *args, **kwargs):
        if self.full and any(c in mode for c in "wax+") and str(file).startswith(self.root):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return self.real_open(file, mode, *args, **kwargs)

    def install(self, monkeypatch) -> None:
        from lightning.fabric.plugins.io import torch_io

        monkeypatch.setattr(torch_io, "_atomic_save", self.save)
        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(io, "open", self.open)


@pytest.mark.parametrize("stays_full", [False, True])
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, stays_full):
    path = _recipe(tmp_path)
    _FullDisk(tmp_path / "out", fail_on=3, stays_full=stays_full).install(monkeypatch)  # saves at 2, 4, then 6 fails
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stage 'b' stopped: [Errno 28] No space left on device")  # one message, no traceback
    assert "the last complete checkpoint is kept" in last and "(step 4)" in last and "--resume" in last
    stage_b = tmp_path / "out" / "b"
    assert _ckpt_step(stage_b) == 4  # the half-written file never replaced it
    assert not list((tmp_path / "out").rglob("*.tmp"))  # neither the half checkpoint nor a record temp file stays
    record = json.loads((stage_b / "record.json").read_text())
    if stays_full:  # the failure record could not be written: the last one written, when it was true, stays
        assert "its record could not be updated (No space left on device)" in last
        assert record["status"] == "running"
    else:
        assert "record could not be updated" not in last
        assert record["status"] == "failed" and "No space left" in record["error"] and record["checkpoint_step"] == 4
    assert json.loads((tmp_path / "out" / "a" / "record.json").read_text())["status"] == "finished"
    monkeypatch.undo()
    records = run_recipe(load_recipe(path), RunOptions(resume=True))  # space freed: continue at step 4
    assert records["b"]["global_step"] == 10
    assert json.loads((stage_b / "starts.json").read_text()) == [0, 4]


def test_a_crash_in_the_middle_of_a_save_leaves_a_usable_checkpoint(tmp_path):
    """What ``kill -9`` during ``torch.save`` leaves behind: a complete last.ckpt and a partial temp file."""
    path = _recipe(tmp_path, steps=4)
    run_recipe(load_recipe(path), RunOptions(only="a"))
    stage_b = tmp_path / "out" / "b"
    # A run of b that saved step 2, then died while writing step 4 (the temp file holds half of it).
    with pytest.raises(RuntimeError, match="simulated crash"):
        import os

        os.environ["MUST_TEST_CRASH_AT"] = "3"
        try:
            run_recipe(load_recipe(path))
        finally:
            del os.environ["MUST_TEST_CRASH_AT"]
    good = (stage_b / "checkpoints" / "last.ckpt").read_bytes()
    (stage_b / "checkpoints" / "last.ckpt.tmp").write_bytes(good[: len(good) // 3])
    assert _ckpt_step(stage_b) == 2
    records = run_recipe(load_recipe(path), RunOptions(resume=True))
    assert records["b"]["global_step"] == 4
    assert json.loads((stage_b / "starts.json").read_text()) == [0, 2]


def test_nan_loss_stops_with_the_last_good_checkpoint_and_a_message(tmp_path, monkeypatch, capsys):
    path = _recipe(tmp_path, kind="tests._scale_stages:NaNProducer")
    monkeypatch.setenv("MUST_TEST_NAN_AT", "5")  # steps 0-4 are fine, step 5's loss is NaN
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training loss became nan at step 5" in err and "the last good checkpoint is kept" in err
    assert err.strip().splitlines()[-1].startswith("error: training loss became nan")  # one message, no traceback
    stage_b = tmp_path / "out" / "b"
    ckpt = torch.load(stage_b / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert json.loads((stage_b / "record.json").read_text())["status"] == "failed"
    # The finished stage before it is untouched and skipped on the next run.
    monkeypatch.delenv("MUST_TEST_NAN_AT")
    assert json.loads((tmp_path / "out" / "a" / "record.json").read_text())["status"] == "finished"
    records = run_recipe(load_recipe(path), RunOptions(resume=True))
    assert records["b"]["status"] == "finished" and records["b"]["global_step"] == 10


def test_resume_refuses_a_changed_config_instead_of_mixing_runs(tmp_path):
    path = _recipe(tmp_path, steps=4)
    import os

    os.environ["MUST_TEST_CRASH_AT"] = "3"
    try:
        with pytest.raises(RuntimeError):
            run_recipe(load_recipe(path))
    finally:
        del os.environ["MUST_TEST_CRASH_AT"]
    with pytest.raises(MustError, match="unfinished run with a different config; run again with --restart b"):
        run_recipe(load_recipe(path, ["stages.b.options.lr=0.5"]), RunOptions(resume=True))


def _crash(path: Path, at: int, opts: RunOptions | None = None) -> None:
    import os

    os.environ["MUST_TEST_CRASH_AT"] = str(at)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_recipe(load_recipe(path), opts)
    finally:
        del os.environ["MUST_TEST_CRASH_AT"]


def test_resume_continues_the_csv_log_instead_of_erasing_it(tmp_path):
    """Crash at step 8 (checkpoint at 6, rows 0-7 logged), resume: the log equals an uninterrupted run's."""

    def recipe(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(f"""
            name: toy
            output_dir: {tmp_path / name}
            logger: {{kind: csv}}
            stages:
              - name: a
                kind: tests._stages:Producer
                trainer: {{max_steps: 10, checkpoint_every_n_steps: 3, log_every_n_steps: 1, enable_progress_bar: false}}
        """))
        return path

    run_recipe(load_recipe(recipe("whole")))
    _crash(recipe("cut"), at=8)
    log = tmp_path / "cut" / "a" / "logs" / "metrics.csv"
    assert log.read_text().count("\n") == 1 + 8  # header and steps 0-7
    run_recipe(load_recipe(recipe("cut")), RunOptions(resume=True))
    steps = [line.split(",")[1] for line in log.read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(10)]  # before the fix: only 6-9, the earlier rows deleted
    assert log.read_text() == (tmp_path / "whole" / "a" / "logs" / "metrics.csv").read_text()


def test_a_refused_run_leaves_recipe_yaml_describing_the_run_that_happened(tmp_path):
    path = _recipe(tmp_path, steps=4)
    run_recipe(load_recipe(path))
    written = (tmp_path / "out" / "recipe.yaml").read_text()
    with pytest.raises(MustError, match="stage 'b' finished earlier with a different config"):
        run_recipe(load_recipe(path, ["stages.b.options.lr=0.5"]))
    assert (tmp_path / "out" / "recipe.yaml").read_text() == written  # before the fix: lr 0.5, a run that never was


def test_a_stage_whose_init_from_failed_is_named_again_not_a_missing_checkpoint(tmp_path, capsys):
    (tmp_path / "not_a_model").mkdir()
    toy_recipe(tmp_path, {"name": "a", "kind": "tests._stages:Producer", "trainer": {"max_steps": 3}},
               {"name": "b", "kind": "tests._stages:Producer", "init_from": str(tmp_path / "not_a_model"),
                "trainer": {"max_steps": 10, "checkpoint_every_n_steps": 2}})
    for attempt in range(2):
        assert main(["run", str(tmp_path / "toy.yaml")]) == 2
        err = capsys.readouterr()
        last = err.err.strip().splitlines()[-1]
        assert last.startswith("error: stage 'b' stopped: [Errno 2] No such file") and "weights.pt" in last, last
        assert "no checkpoint was written yet" in last and "--resume" not in last
    assert "an earlier attempt stopped before its first checkpoint" in err.out and "starting over" in err.out
