"""Metrics synced across 2 CPU processes (torch.distributed, gloo) equal the single-process values.

(TAD rows are left out only to keep the children from loading WordNet; METEOR sums the same way.)"""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PREDS_TIME = ["0:33", "0:40", "bad", "1:00", "0:27", None]
REFS_TIME = ["0:30", "0:30", "0:30", "1:02", "0:30", "0:10"]
PREDS_IV = ["0:10-0:20", "0:00-1:00", "", "0:15-0:25, 0:20-0:40"]
REFS_IV = [["0:12\u20130:30"], ["0:57\u20131:12"], ["0:00\u20130:05"], ["0:10\u20130:20", "0:30\u20130:50"]]
ROWS = [
    {"id": "a", "task": "TSG", "qa_type": "onset", "answer": "0:30", "answers": ["0:30"]},
    {"id": "b", "task": "TSG", "qa_type": "offset", "answer": "1:30", "answers": ["1:30"]},
    {"id": "c", "task": "LTR", "qa_type": "x", "answer": "B", "answers": ["B"]},
    {"id": "d", "task": "MTR", "qa_type": None, "answer": "0:10\u20130:20", "answers": ["0:10\u20130:20"]},
    {"id": "f", "task": "GTO", "qa_type": None, "answer": "E", "answers": ["E"]},
    {"id": "g", "task": "TSG", "qa_type": "onset", "answer": "0:05", "answers": ["0:05"]},
]
PREDS_ROWS = ["0:31", "1:35", "(B)", "0:15-0:30", "F", "0:08"]


def _values(rank: int = 0, world: int = 1) -> dict:
    from must.metrics import HitAtK, MusTBenchMetric, OptionAccuracy, TemporalF1, TemporalIoU

    out = {}
    for name, metric, preds, refs in [
        ("hit", HitAtK(3.0), PREDS_TIME, REFS_TIME),
        ("acc", OptionAccuracy("ABCD"), ["A", "(B)", "C.", "x"], ["A", "B", "D", "D"]),
        ("iou", TemporalIoU(), PREDS_IV, REFS_IV),
        ("f1", TemporalF1(), PREDS_IV, REFS_IV),
    ]:
        # uneven shards on purpose: rank r takes items r, r + world, ...
        metric.update(preds[rank::world], refs[rank::world])
        out[name] = metric.compute().item()
    bench = MusTBenchMetric()
    bench.update(PREDS_ROWS[rank::world], ROWS[rank::world])
    out["bench"] = bench.compute()
    return out


def _worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        values = _values(rank, world)
        if rank == 0:
            with open(path, "w") as fh:
                json.dump(values, fh)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_sync_equals_single_process(tmp_path):
    import must.metrics  # noqa: F401  (loaded before forking)

    torch.set_num_threads(1)
    path = str(tmp_path / "synced.json")
    # fork: the children inherit the imports (spawn re-imports torch twice, ~20 s on a busy 2-core box)
    mp.start_processes(_worker, args=(2, _free_port(), path), nprocs=2, join=True, start_method="fork")
    with open(path) as fh:
        synced = json.load(fh)
    single = _values()
    for key in ("hit", "acc", "iou", "f1"):
        assert synced[key] == pytest.approx(single[key], abs=1e-12), key
    assert synced["bench"] == single["bench"]
    assert single["hit"] == pytest.approx(3 / 6)  # 0:33 and 0:27 (edges), 1:00 vs 1:02 hit
