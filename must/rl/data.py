"""GRPO's prompts: rows (plain dicts: the prompt, the columns the rewards read, for audio the waveform),
the tracks they come from, the endless resumable batches a step reads, and the fresh rows a group refill
draws."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def collate_rows(items: list) -> list[dict]:
    """Keep a batch as a flat list of row dicts (an item may be a list of rows; dataclass rows become dicts)."""
    rows = [r for item in items for r in (item if isinstance(item, list) else [item])]
    return [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]


def refill_rows(data: Any, batch_size: int, rank: int, step: int, round_: int) -> list[dict]:
    """``batch_size`` fresh items for group-refill round ``round_`` of optimisation step ``step`` on process ``rank``,
    drawn by a generator seeded by (rank, step, round) and nothing else, so a resumed run refills exactly as the
    uninterrupted one."""
    gen = torch.Generator().manual_seed(1_000_003 * (rank + 1) + 7_919 * step + round_)
    idx = torch.randperm(len(data), generator=gen)[:batch_size].tolist()
    return collate_rows([data[i] for i in idx])


class PromptBatches(torch.utils.data.IterableDataset):
    """Endless batches of rows in a sampler's order.

    An iterable on purpose: Lightning then adds no DistributedSampler (it would try to materialise the
    endless, already rank-aware :class:`~must.resume.StepSampler` and never return).
    """

    def __init__(self, data: Any, sampler: Any, batch_size: int):
        self.data, self.sampler, self.batch_size = data, sampler, batch_size

    def __iter__(self):
        order = iter(self.sampler)
        while True:
            yield collate_rows([self.data[next(order)] for _ in range(self.batch_size)])


class SynthTracks(torch.utils.data.Dataset):
    """Synthetic tracks of a split with their questions, rendered once per process (shared with stages 1-3)."""

    def __init__(self, cfg: Any, split: str = "train"):
        from must.data.datasets import split_size

        self.cfg, self.split, self.n = cfg, split, split_size(cfg, split)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        from must.data.datasets import synthetic_qas
        from must.stages.common import cached_track

        track = cached_track(self.cfg, self.split, index)
        qas = synthetic_qas(self.cfg, track, self.split, index)
        return {"waveform": track.audio, "qas": qas, "track_id": track.id, "duration": track.duration}


class QAPrompts(torch.utils.data.Dataset):
    """GRPO rows from a track dataset (items with ``waveform``, ``qas``, ``track_id``, ``duration``).

    Item i is a list of ``questions_per_clip`` rows of track i (a seeded choice among its questions);
    each row holds the waveform, the QA's columns (``task``, ``answer``, ``answers``, ...) for the reward
    router, and ``prompt`` = the question.
    """

    def __init__(self, tracks: Any, questions_per_clip: int = 1, seed: int = 0, answer_format: str = "plain"):
        self.tracks, self.k, self.seed = tracks, max(1, questions_per_clip), seed
        self.answer_format = answer_format  # a column for the rewards: grounded completions are traces

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> list[dict]:
        item = self.tracks[index]
        qas = list(item["qas"])
        order = torch.randperm(len(qas), generator=torch.Generator().manual_seed(self.seed * 100_003 + index))
        rows = []
        for j in order[: self.k].tolist():
            qa = dataclasses.asdict(qas[j]) if dataclasses.is_dataclass(qas[j]) else dict(qas[j])
            qa["duration"] = qa.get("duration") or item["duration"]
            rows.append({**qa, "waveform": item["waveform"], "track_id": item["track_id"], "prompt": qa["question"],
                         "answer_format": self.answer_format})
        return rows
