"""Timeline plots: PNGs for times, intervals and missing answers; rows picked per task."""

from must.viz import _as_marks, plot_rows, plot_timeline


def test_marks_from_parsed_values():
    assert _as_marks(33.0) == ([33.0], [])
    assert _as_marks([57.0, 72.0]) == ([], [(57.0, 72.0)])
    assert _as_marks([[10.0, 20.0], [30.0, 40.0]]) == ([], [(10.0, 20.0), (30.0, 40.0)])
    assert _as_marks(None) == ([], [])


def test_plot_timeline_writes_png(tmp_path):
    for name, ref, pred in [("t", [30.0], 33.0), ("i", [(57.0, 72.0)], [[50.0, 65.0], [80.0, 90.0]]), ("n", [5.0], None)]:
        path = plot_timeline(tmp_path / f"{name}.png", 97.4, ref, pred, title=name, note="x")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_rows_picks_first_rows_of_each_task(tmp_path):
    refs = [{"id": f"tsg/{i}", "task": "TSG", "qa_type": "onset", "answer": "0:30", "answers": ["0:30"]} for i in range(3)]
    refs += [{"id": "ltr", "task": "LTR", "answer": "A", "answers": ["A"]},
             {"id": "mtr", "task": "MTR", "answer": "0:10\u20130:20", "answers": ["0:10\u20130:20"]}]
    preds = {"tsg/0": {"parsed": 31.0, "duration": 60.0}, "mtr": {"parsed": None, "reason": "no interval found"}}
    written = plot_rows(refs, preds, tmp_path, n_per_task=2)
    assert sorted(p.name for p in written) == ["MTR_mtr.png", "TSG_tsg_0.png", "TSG_tsg_1.png"]
