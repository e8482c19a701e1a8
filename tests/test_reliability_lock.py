"""One output folder, one run: two real ``must run`` processes on one ``output_dir``, a killed holder's stale
lock, and Ctrl-C (exit 130, the resume hint, a record naming the checkpoint's step).

Each test starts ``python -m must.cli run`` on the toy stage with the pause hook (``tests._scale_stages``):
it sleeps at global step 3, after the checkpoint of step 2, until the test signals it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._stages import toy_recipe

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path) -> Path:
    return toy_recipe(tmp_path, {"name": "a", "kind": "tests._scale_stages:PausingProducer",
                                 "trainer": {"max_steps": 6, "checkpoint_every_n_steps": 2}})


def _must(*args: str, pause_at: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MUST_TEST_PAUSE_AT", None)
    if pause_at is not None:
        env["MUST_TEST_PAUSE_AT"] = str(pause_at)
    return subprocess.Popen([sys.executable, "-m", "must.cli", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _paused(proc: subprocess.Popen, stage_dir: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (stage_dir / "paused.json").exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the pause: {proc.communicate()}")
        assert time.time() < deadline, "the run never reached the pause"
        time.sleep(0.2)


def _done(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def holder(tmp_path):
    """A ``must run`` paused in the middle of stage a, holding the output folder; killed at the end."""
    recipe = _recipe(tmp_path)
    proc = _must(str(recipe), pause_at=3)
    _paused(proc, tmp_path / "out" / "a")
    yield recipe, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_a_second_run_on_a_busy_folder_is_refused_with_the_holders_pid(holder, tmp_path):
    recipe, proc = holder
    lock = json.loads((tmp_path / "out" / ".must.lock").read_text())
    assert lock["pid"] == proc.pid
    for extra in ([], ["--resume"]):
        code, _, err = _done(_must(str(recipe), *extra))
        assert code == 2, err
        assert err.startswith("error: output_dir ") and f"in use by another must run (PID {proc.pid}" in err, err
        assert "Traceback" not in err
    # The refused runs touched nothing: no duplicate checkpoint, the holder's record still says running.
    ckpts = sorted(p.name for p in (tmp_path / "out" / "a" / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"]
    assert json.loads((tmp_path / "out" / "a" / "record.json").read_text())["status"] == "running"


def test_a_killed_runs_stale_lock_is_named_and_taken_over(holder, tmp_path):
    recipe, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    lock_file = tmp_path / "out" / ".must.lock"
    assert json.loads(lock_file.read_text())["pid"] == proc.pid  # kill -9 leaves the file behind
    code, out, err = _done(_must(str(recipe), "--resume"))
    assert code == 0, err
    assert f"took over a stale lock left by PID {proc.pid}" in out and "that process is gone" in out
    assert "resuming from" in out and "(step 2)" in out
    assert not lock_file.exists()  # released on exit


def test_ctrl_c_exits_130_with_the_resume_hint_and_the_checkpoints_step(holder, tmp_path):
    recipe, proc = holder
    proc.send_signal(signal.SIGINT)
    code, _, err = _done(proc)
    assert code == 130, err
    last = err.strip().splitlines()[-1]
    # Paused at step 3; the checkpoint holds step 2, and that is the step named.
    assert last.startswith("error: stage 'a' interrupted at step 2;") and "run again with --resume" in last, err
    record = json.loads((tmp_path / "out" / "a" / "record.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "interrupted at step 2"
    assert record["checkpoint_step"] == 2 and record["global_step"] == 3
    assert not (tmp_path / "out" / ".must.lock").exists()
    code, out, err = _done(_must(str(recipe)))  # without --resume: the hint again, the right step
    assert code == 2 and "its checkpoint" in err and "holds step 2" in err and "pass --resume" in err, err
