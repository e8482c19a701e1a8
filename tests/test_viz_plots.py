"""must.viz: every plot writes a PNG whose pixels depend on its input; times on round M:SS ticks."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from must import viz
from must.data import generate_track
from must.data.targets import frame_times, transition_curve
from must.data.types import ArousalSegment, Track, Transition

PNG = b"\x89PNG\r\n\x1a\n"


def pixels(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000
    return imread(path)


def differ(a, b):
    return a.shape != b.shape or not np.array_equal(a, b)


@pytest.fixture(scope="module")
def track():
    return generate_track(7)


def test_plot_track_shows_audio_sources_and_boundaries(tmp_path, track):
    img = pixels(viz.plot_track(tmp_path / "a.png", track))
    other = generate_track(8)
    assert differ(img, pixels(viz.plot_track(tmp_path / "b.png", other)))
    # same labels, silent audio: only the spectrogram changes
    silent = pixels(viz.plot_track(tmp_path / "c.png", track, audio=np.zeros_like(track.audio)))
    assert img.shape == silent.shape and differ(img, silent)
    # no audio at all: the spectrogram panel is left out, the picture is shorter
    labels_only = pixels(viz.plot_track(tmp_path / "d.png", generate_track(7, render_audio=False)))
    assert labels_only.shape[0] < img.shape[0]


def test_plot_track_moves_with_a_label(tmp_path):
    def small(onset):
        return Track("t", 30.0, sources={"bass": [(onset, 25.0)]}, transitions=[Transition(onset, "instrument_in")],
                     arousal=[ArousalSegment(0, onset, 0.2), ArousalSegment(onset, 30.0, 0.8)])

    a = pixels(viz.plot_track(tmp_path / "a.png", small(10.0)))
    b = pixels(viz.plot_track(tmp_path / "b.png", small(12.0)))
    assert a.shape == b.shape and differ(a, b)


def test_transition_curve_changes_with_prediction_and_truth(tmp_path, track):
    times = frame_times(track.duration, 2.5)
    target = transition_curve(track, 2.5)
    bounds = [t.time for t in track.transitions]
    a = pixels(viz.plot_transition_curve(tmp_path / "a.png", times, target * 0.5, bounds, target=target,
                                         peaks=bounds[:1], threshold=0.5))
    b = pixels(viz.plot_transition_curve(tmp_path / "b.png", times, target * 0.9, bounds, target=target,
                                         peaks=bounds[:1], threshold=0.5))
    c = pixels(viz.plot_transition_curve(tmp_path / "c.png", times, target * 0.5, [5.0], target=target,
                                         peaks=bounds[:1], threshold=0.5))
    assert differ(a, b) and differ(a, c)


def test_plot_answers_draws_every_task(tmp_path):
    a = pixels(viz.plot_answers(tmp_path / "a.png", "TSG", 60, "0:20", ["0:21", "0:50"], [1.0, 0.1], "When?"))
    b = pixels(viz.plot_answers(tmp_path / "b.png", "TSG", 60, "0:20", ["0:21", "0:30"], [1.0, 0.1], "When?"))
    assert differ(a, b)
    # unreadable answers, several reference intervals, option letters and free text never raise
    viz.plot_answers(tmp_path / "m.png", "MTR", 60, ["0:10\u20130:20", "0:40\u20130:50"], ["banana", "0:00-1:00"])
    viz.plot_answers(tmp_path / "l.png", "LTR", 60, "B", ["B", "C", ""], [1.2, 0.2, -0.5], "What changes at 0:25?",
                     boundaries=[25.0])
    viz.plot_answers(tmp_path / "t.png", "TAD", 60, "the bass enters", ["drums stop"], None, "Describe 0:25")
    assert all((tmp_path / f"{n}.png").read_bytes()[:8] == PNG for n in "mlt")


def test_histograms_change_with_values(tmp_path):
    a = pixels(viz.plot_histograms(tmp_path / "a.png", {"TSG": [0.1, 0.2, 0.9], "MTR": [0.5], "LTR": []}))
    b = pixels(viz.plot_histograms(tmp_path / "b.png", {"TSG": [0.1, 0.8, 0.9], "MTR": [0.5], "LTR": []}))
    assert differ(a, b)
    pixels(viz.plot_histograms(tmp_path / "e.png", {}))


def test_question_times_and_reference_values():
    assert viz.question_times("What changes at 1:05? A) at 0:07") == [65.0, 7.0]
    assert viz.question_times("no time here") == []
    assert viz.reference_value("TSG", ["0:30"]) == [30.0]
    assert viz.reference_value("MTR", ["0:10\u20130:20", "1:00-1:05"]) == [(10.0, 20.0), (60.0, 65.0)]
    assert viz.reference_value("LTR", ["C"]) == "C"


@pytest.mark.parametrize("end, ticks", [(45.0, [0, 10, 20, 30, 40]), (300.0, [0, 60, 120, 180, 240, 300]),
                                        (7.0, [0, 1, 2, 3, 4, 5, 6, 7])])
def test_time_axis_uses_round_ticks(end, ticks):
    ax = Figure().subplots()
    viz._time_axis(ax, end)
    assert list(ax.get_xticks()) == ticks
    assert ax.get_xticklabels()[1].get_text() == viz.format_time(ticks[1])
