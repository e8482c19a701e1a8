"""Reading an offline W&B run's data file in tests."""


def run_bytes(run, expect: bytes, wait_s: float = 20.0) -> bytes:
    """The offline run's ``.wandb`` file once it holds ``expect`` (or after ``wait_s``): W&B's service process
    can still be writing it when ``finish()`` returns on a loaded machine (seen once in CI: only the header)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        data = b"".join(p.read_bytes() for p in run.glob("*.wandb"))
        if expect in data or time.monotonic() > deadline:
            return data
        time.sleep(0.2)
