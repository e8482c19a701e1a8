"""benchmarks/step_overhead.py: its arithmetic on hand-built timings (exclusive parts, a step's remainder,
means and ratios), not timings."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "step_overhead", Path(__file__).resolve().parents[1] / "benchmarks" / "step_overhead.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


class FakeClock:
    """A clock that reads what the test sets."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_nested_part_counts_to_itself_only():
    now = FakeClock()
    clock = bench.PartClock(now)
    clock.enter("loss+glue")  # t = 0
    now.t = 1.0
    clock.enter("llm fwd")
    now.t = 4.0
    clock.enter("prompt")  # three levels deep
    now.t = 4.5
    assert clock.exit() == 0.5
    now.t = 6.0
    assert clock.exit() == 5.0  # inclusive seconds of llm fwd
    now.t = 7.0
    assert clock.exit() == 7.0
    assert clock.take() == pytest.approx({"loss+glue": 2.0, "llm fwd": 4.5, "prompt": 0.5})
    assert clock.take() == {}  # taken: the next step starts from nothing


def test_wrap_times_the_call_and_records_outside_the_clock():
    now = FakeClock()
    clock = bench.PartClock(now)
    seen = []

    def work(x, scale=1):
        now.t += 2.0
        return x * scale

    def record(out, x, scale=1):
        now.t += 10.0  # what the recorder costs is nobody's part
        seen.append((out, x, scale))

    timed = clock.wrap(work, "encoder", record)
    assert timed(3, scale=2) == 6
    assert seen == [(6, 3, 2)]
    assert clock.take() == {"encoder": 2.0}


def test_close_step_puts_the_rest_in_loop_and_data_and_leaves_out_the_reference():
    parts = {"encoder": 0.1, "llm fwd": 0.2, "backward": 0.3}
    step = bench.close_step(parts, start=10.0, end=11.5, outside=0.5)  # 1.0 s of the stage's own
    assert step == pytest.approx({"encoder": 0.1, "llm fwd": 0.2, "backward": 0.3, "loop+data": 0.4})
    with pytest.raises(ValueError, match="unknown parts.*'typo'"):
        bench.close_step({"typo": 0.1}, 0.0, 1.0)


def test_summarise_means_and_ratios():
    steps = [{"encoder": 0.100, "llm fwd": 0.050, "backward": 0.100, "loop+data": 0.010},
             {"encoder": 0.140, "llm fwd": 0.070, "backward": 0.120, "loop+data": 0.010}]
    refs = [{"fwd": 0.040, "bwd": 0.080, "adamw": 0.005}, {"fwd": 0.060, "bwd": 0.100, "adamw": 0.015}]
    s = bench.summarise(steps, refs, new_share=0.25)
    assert s["parts"]["encoder"] == pytest.approx(120.0)
    assert s["parts"]["prompt"] == 0.0  # a part no step had
    assert s["total"] == pytest.approx(120 + 60 + 110 + 10)
    assert s["ref"] == pytest.approx({"fwd": 50.0, "bwd": 90.0, "adamw": 10.0})
    assert s["ref_total"] == pytest.approx(150.0)
    assert s["ratio"] == pytest.approx(300 / 150)
    assert s["ratio_no_encoder"] == pytest.approx(180 / 150)
    assert s["ratio_mix"] == pytest.approx((300 - 0.75 * 120) / 150)  # encoder on a quarter of the steps
    with pytest.raises(ValueError, match="one reference per step"):
        bench.summarise(steps, refs[:1])


def test_markdown_row_shows_the_figures_and_dashes_for_absent_parts():
    s = bench.summarise([{"llm fwd": 0.030, "backward": 0.060}], [{"fwd": 0.020, "bwd": 0.040, "adamw": 0.0}])
    s["encoder_is_reference"] = True
    table = bench.markdown({"encoder (encoder_adapt)": s}).splitlines()
    assert len(table) == 3
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    row = dict(zip(head, cells))
    assert row["llm fwd"] == "30.0" and row["encoder"] == "-" and row["total"] == "**90.0**"
    assert row["ref total"] == "**60.0**" and row["x"] == "**1.50**" and row["x no enc"] == "-"
