"""Caches bounded by bytes: the LRU on a hand-built case, rendered tracks per run, encodings per stage."""

from dataclasses import replace

import numpy as np
import pytest

from must.data.cache import ByteLRU, TrackCache, run_tracks, track_bytes, tracks_for
from must.data.config import DataConfig
from must.data.datasets import CaptionTracks, Stage1Tracks, synthetic_track

CFG = DataConfig(min_seconds=8.0, max_seconds=8.5, train_tracks=4, val_tracks=1, test_tracks=1)


def test_lru_evicts_the_least_recently_used_by_bytes():
    lru = ByteLRU(100, len)
    for key in "abc":
        lru.put(key, b"x" * 40)
    assert list(lru.items) == ["b", "c"] and lru.nbytes == 80 and lru.evictions == 1  # a: 120 > 100
    assert lru.get("b") == b"x" * 40 and lru.get("a") is None  # b is now the most recent
    lru.put("d", b"y" * 40)
    assert list(lru.items) == ["b", "d"] and lru.nbytes == 80  # c went, not b
    assert lru.put("big", b"z" * 150) == b"z" * 150 and "big" not in lru  # over the whole budget: not kept
    assert list(lru.items) == ["b", "d"]
    lru.put("b", b"w" * 10)  # a new value for a key replaces its bytes
    assert lru.nbytes == 50 and list(lru.items) == ["d", "b"]
    lru.resize(20)
    assert list(lru.items) == ["b"] and lru.nbytes == 10
    assert (lru.hits, lru.misses) == (1, 1)


def test_track_cache_holds_what_its_bytes_allow():
    size = track_bytes(synthetic_track(CFG, "train", 0))
    assert size == pytest.approx(8.25 * 16000 * 4, rel=0.05)  # float32 audio of an 8-8.5 s track
    cache = TrackCache(int(2.5 * size))
    held = [cache.track(CFG, "train", i) for i in range(3)]
    assert len(cache.lru) == 2 and cache.lru.nbytes <= 2.5 * size  # track 0 dropped for track 2
    assert cache.track(CFG, "train", 2) is held[2]  # kept: the same object, not a new render
    again = cache.track(CFG, "train", 0)  # rendered again, the same audio
    assert again is not held[0] and np.array_equal(again.audio, held[0].audio)
    other = replace(CFG, seed=1)
    assert cache.track(other, "train", 0).id != again.id  # the rendering config is part of the key


def test_a_run_owns_its_tracks_and_its_stages_share_them():
    cfg = replace(CFG, track_cache_bytes=10 * 2**20)
    with run_tracks(cfg) as run:
        assert tracks_for(cfg) is run and run.lru.max_bytes == 10 * 2**20
        stage1 = Stage1Tracks(cfg, "train", 2.5, cfg.train_tracks)[1]
        stage2 = CaptionTracks(cfg, "train", cfg.train_tracks, ["p"])[1]
        assert stage2["waveform"] is stage1["waveform"]  # stage 1's render serves stage 2
        assert run.lru.misses == 1 and run.lru.hits == 1
    assert tracks_for(cfg) is not run  # the run's tracks go with it


def test_the_runner_renders_each_track_once_for_all_its_stages(tmp_path, monkeypatch):
    import yaml

    from must.config import load_recipe
    from must.data import cache, datasets
    from must.runner import run_recipe
    from tests._tiny import TINY_MODEL

    renders, reads, caches = [], [], []
    render, read = datasets.synthetic_track, cache.TrackCache.track

    def counted_render(cfg, split, i, *args):
        renders.append((split, i))
        return render(cfg, split, i, *args)

    def counted_read(self, cfg, split, i):
        reads.append((split, i))
        if self not in caches:
            caches.append(self)
        return read(self, cfg, split, i)

    monkeypatch.setattr(datasets, "synthetic_track", counted_render)
    monkeypatch.setattr(cache.TrackCache, "track", counted_read)
    trainer = {"max_steps": 2, "enable_progress_bar": False, "limit_val_batches": 1, "val_check_interval": 2}
    recipe = {"name": "reuse", "seed": 0, "output_dir": str(tmp_path / "out"), "logger": {"kind": "none"},
              "model": TINY_MODEL,
              "data": {"min_seconds": 8, "max_seconds": 9, "train_tracks": 2, "val_tracks": 1, "test_tracks": 1},
              "stages": [
                  {"name": "enc", "kind": "encoder_adapt", "options": {"batch_size": 2}, "trainer": trainer},
                  {"name": "cap", "kind": "lm_adapt", "init_from": "enc", "options": {"batch_size": 2},
                   "trainer": trainer}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run_recipe(load_recipe(tmp_path / "r.yaml"))
    assert sorted(set(renders)) == sorted(renders)  # no track rendered twice
    assert {("train", 0), ("train", 1), ("val", 0)} <= set(renders)
    # 2 steps x 2 clips over 2 training tracks: each read twice per stage, four times in all, rendered once.
    assert reads.count(("train", 0)) == reads.count(("train", 1)) == 4
    assert len(caches) == 1 and tracks_for(DataConfig()) not in caches  # one for the run, gone with it
