"""Time pointer: the time tokens' logits also point into the audio (``time_embedding.pointer``).

With time tokens alone, the position that writes a time must fetch, by attention, the time embedding of
the audio token it is looking for and copy it out through the tied LM-head row. The pointer gives that
step its own head, as E.T. Chat points into its input frames: a query from the position that writes a
time is matched against a key from every audio token's last-layer state, and each time token's logit
gains the log-sum-exp of its audio tokens' scores (the tokens whose time embedding it is; past the clip,
the nearest token's). ``benchmarks/tsg_probe.py --answer pointer``
measured it on the abstract TSG lookup: Hit@3s 94-100 after 100 steps, where the tied time token alone
is at 39-50 (and 88 after 600); ``benchmarks/results/grounded.md`` §5.

With ``time_embedding.pointer_options`` the same head also points the answer letters (A-F) at their options:
each option line of the prompt (``B. the drums come in``) gives a key from its *last* token's state (the only
one that has read the whole option, causally), and the letter's logit gains ``q(h) . k'(line end)``, so the
letter after a trace that has just named what it found is one comparison, not a copy from the prompt.

The keys are read from the final norm's output (a forward hook) in the LLM call that starts the sequence
(no cache yet: a pre-hook on the decoder tells), and kept for the calls that continue it on a cache
(generation, GRPO's completions); the logits are changed by a forward hook on the LM head, after
:func:`must.models.time_tokens.tie_head`'s.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from must.errors import ConfigError


#: ``time_embedding.read_labels``: the labels whose ``X: <text>`` lines are read (MusTBench GTO's three changes).
LABEL_LETTERS = "XYZ"
#: ``read_labels``: the weight of a line's ``j``-th token in its early-weighted mean is ``LABEL_DECAY ** j``
#: (half of the weight on its first two tokens, 88 % on its first six).
LABEL_DECAY = 0.7


class TimePointer(nn.Module):
    """Query and key maps (H -> H) and the rows of the current batch: where each row's keys sit (its audio
    tokens, and with ``time_embedding.pointer_prompt`` its prompt's own time tokens) and which slot each holds:
    a time step ``0 .. count - 1``, or with ``letters`` (``time_embedding.pointer_options``) ``count + i`` for
    the end of option line ``i`` (letter ``"ABCDEF"[i]``), whose token ids are ``letters[i]`` (-1 pads)."""

    def __init__(self, hidden: int, first: int, count: int, context: bool = False,
                 letters: list[list[int]] | None = None, window: float = 0.0,
                 labels: list[list[int]] | None = None):
        super().__init__()
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.k = nn.Linear(hidden, hidden, bias=False)
        # ``time_embedding.pointer_context``: a key also holds the running maximum of a map of the audio
        # tokens before it and of those after it, so "first onset" and "final offset" are linear in the key.
        self.before = nn.Linear(hidden, hidden, bias=False) if context else None
        self.after = nn.Linear(hidden, hidden, bias=False) if context else None
        # ``time_embedding.pointer_window``: and the mean of the audio tokens in the ``window`` time steps before
        # it and in those after it, so "the bass stops here" is local: a running maximum is undone by one stray
        # later detection, and cannot tell the token at an offset from every later one.
        self.window = window
        self.near_before = nn.Linear(hidden, hidden, bias=False) if window > 0 else None
        self.near_after = nn.Linear(hidden, hidden, bias=False) if window > 0 else None
        self.first, self.count = first, count
        # pointer_options: the option lines' keys get their own map (an option's text is not a time).
        self.k_option = nn.Linear(hidden, hidden, bias=False) if letters else None
        width = max((len(ids) for ids in letters), default=0) if letters else 0
        self.letter_ids = (torch.tensor([ids + [-1] * (width - len(ids)) for ids in letters], dtype=torch.long)
                           if letters else None)  # (n_letters, variants), e.g. " B" and "B"
        self.slots = count + (len(letters) if letters else 0)  # time steps, then option letters; spare: slots
        # ``time_embedding.read_labels``: an answer's label token (``X``) gains its prompt line's read (zero at first).
        self.label_mean = nn.Linear(hidden, hidden, bias=False) if labels else None
        self.label_first = nn.Linear(hidden, hidden, bias=False) if labels else None
        if labels:
            nn.init.zeros_(self.label_mean.weight)
            nn.init.zeros_(self.label_first.weight)
        lw = max((len(ids) for ids in labels), default=0) if labels else 0
        self.label_ids = (torch.tensor([ids + [-1] * (lw - len(ids)) for ids in labels], dtype=torch.long)
                          if labels else None)  # (n_labels, variants): "X" and " X"
        self.label_rows: torch.Tensor | None = None  # (B, n_labels, H) each prompt row's line reads, see set_labels
        self._own_text = False  # pack_questions is embedding its own text (it adds the answers' reads itself)
        self.kept: torch.Tensor | None = None  # (K,) the positions the LM head runs on (logits_to_keep), see keeping
        self.positions: torch.Tensor | None = None  # (B, T) sequence positions of the keys, -1: none
        self.audio: torch.Tensor | None = None  # (B, T) which keys are audio tokens (else prompt time tokens)
        self.blocks: torch.Tensor | None = None  # (B, T) a prompt time token's question block, -1: all see it
        self.query_blocks: torch.Tensor | None = None  # (B, L) each position's block in a packed call (pack_questions)
        self.nearest: torch.Tensor | None = None  # (B, count) per time step, the index of the nearest audio token
        self.keys: torch.Tensor | None = None  # (B, T, H) of the call that saw the audio
        self.step_of: torch.Tensor | None = None  # (B, T) each key's time step, ``count`` on padding
        self.empty: torch.Tensor | None = None  # (B, count) the steps no audio token of the row holds
        self._fresh = True
        self.row_index: torch.Tensor | None = None  # see follow

    def set_rows(self, positions: torch.Tensor, steps: torch.Tensor, audio: torch.Tensor | None = None,
                 blocks: torch.Tensor | None = None, query_blocks: torch.Tensor | None = None) -> None:
        """The next LLM calls' keys: ``positions`` (B, T) long in the sequence (-1 pads a row with fewer) and
        ``steps`` (B, T) their slots (time steps; ``count + i`` for option line ``i``). ``audio`` (B, T) bool tells the audio tokens from the prompt's own
        time tokens (None: all audio); ``blocks`` (B, T) long the packed question block a prompt time token
        belongs to (-1: seen by every block); ``query_blocks`` (B, L) long each position's block in a packed
        call (:func:`~must.models.prompts.pack_questions`; None: one question per row). Forgets the previous batch's keys."""
        valid = positions >= 0
        audio = valid if audio is None else audio & valid
        if not audio.any(-1).all():
            raise ValueError("time pointer: every row needs at least one audio token")
        grid = torch.arange(self.count, device=steps.device)
        dist = (steps[:, None, :] - grid[None, :, None]).abs().float()  # (B, count, T)
        dist = dist.masked_fill(~audio[:, None, :], math.inf)
        self.positions, self.nearest, self.keys, self.row_index = positions, dist.argmin(-1), None, None
        self.audio = audio
        self.blocks = torch.full_like(positions, -1) if blocks is None else blocks
        self.query_blocks = query_blocks
        # Each key belongs to its own slot (the time step its time token is, or its option's letter);
        # padding to the spare slot ``slots``.
        self.step_of = torch.where(valid, steps.clamp(0, self.slots - 1), self.slots)
        held = torch.zeros(steps.shape[0], self.slots + 1, dtype=torch.bool, device=steps.device)
        audio_step = torch.where(audio, self.step_of, self.slots)
        self.empty = ~held.scatter_(1, audio_step, True)[:, : self.count]  # (B, count) steps with no audio token

    def row(self, row: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positions, steps, audio, label reads) of one row as :meth:`set_rows` and :meth:`set_labels` take them,
        padding dropped."""
        valid = self.positions[row] >= 0
        labels = None if self.label_rows is None else self.label_rows[row]
        return self.positions[row][valid], self.step_of[row][valid], self.audio[row][valid], labels

    def stack_rows(self, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
                   shifts: list[int]) -> None:
        """:meth:`set_rows` (and :meth:`set_labels`) from rows gathered one at a time (:meth:`row`), row ``i``
        moved ``shifts[i]`` on (the left padding a batch of separately built prompts gets)."""
        n = max(len(r[0]) for r in rows)
        positions = torch.full((len(rows), n), -1, dtype=torch.long, device=rows[0][0].device)
        steps = torch.full_like(positions, -1)
        audio = torch.zeros_like(positions, dtype=torch.bool)
        for i, ((p, st, au, _), shift) in enumerate(zip(rows, shifts)):
            positions[i, : len(p)], steps[i, : len(p)], audio[i, : len(p)] = p + shift, st, au
        self.set_rows(positions, steps, audio)
        self.set_labels(None if rows[0][3] is None else torch.stack([r[3] for r in rows]))

    def read_lines(self, lines: list[torch.Tensor]) -> torch.Tensor:
        """``read_labels``: (N, H) the reads of N labelled lines, each ``lines[i]`` (n_i, H) the input embeddings
        of line ``i``'s text in order: its mean through one map plus a mean weighted ``LABEL_DECAY ** j`` at the
        ``j``-th token through the other (a line such as "The guitar and vocals come in and the music gets louder"
        is keyed by its first phrase, ``onset guitar``, which a plain mean loses)."""
        means, firsts = [], []
        for x in lines:
            w = LABEL_DECAY ** torch.arange(len(x), device=x.device, dtype=x.dtype)
            means.append(x.mean(0))
            firsts.append((w[:, None] * x).sum(0) / w.sum())
        x = torch.stack(means).to(self.label_mean.weight.dtype)
        return self.label_mean(x) + self.label_first(torch.stack(firsts).to(x.dtype))

    def set_labels(self, rows: torch.Tensor | None) -> None:
        """The next calls' label reads: ``rows`` (B, n_labels, H), per prompt row the read of each label's line
        (zeros for a label its prompt has none of); None: none. A generated label token gains its row's read."""
        self.label_rows = rows

    @contextlib.contextmanager
    def own_text(self):
        """Within the block the input embedding is embedding a prompt builder's text, whose answers' reads the
        builder adds itself: :meth:`embed_labels` leaves it alone."""
        held, self._own_text = self._own_text, True
        try:
            yield
        finally:
            self._own_text = held

    def label_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(...,) token ids -> (..., n_labels) bool: which label each token is alone (``X`` or `` X``)."""
        table = self.label_ids.to(ids.device)
        return ((ids[..., None, None] == table) & (table >= 0)).any(-1)

    def embed_labels(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        """Forward hook on the input embedding: a generated or scored completion's label token (``X``) gains its
        prompt row's line read (:meth:`set_labels`); every other token, and a prompt builder's text, is unchanged."""
        if self.label_rows is None or self._own_text or inputs[0].dim() != 2:
            return out
        which = self.label_mask(inputs[0])
        if not which.any():
            return out
        n = self.label_rows.shape[0]
        batch = inputs[0].shape[0]
        if self.row_index is not None and len(self.row_index) == batch:
            idx = self.row_index
        elif batch % n == 0:
            idx = torch.arange(n, device=out.device).repeat_interleave(batch // n)
        else:
            raise ValueError(f"label reads: a call of {batch} rows for {n} prompt rows")
        reads = self.label_rows[idx].to(out.dtype)  # (batch, n_labels, H)
        return out + torch.einsum("blk,bkh->blh", which.to(out.dtype), reads)

    @contextlib.contextmanager
    def only_row(self, row: int):
        """Within the block, the LLM calls are of sequence row ``row`` alone (one call per row)."""
        held = (self.positions, self.nearest, self.step_of, self.empty, self.audio, self.blocks, self.query_blocks,
                self.label_rows)
        (self.positions, self.nearest, self.step_of, self.empty, self.audio, self.blocks, self.query_blocks,
         self.label_rows) = (None if x is None else x[row : row + 1] for x in held)
        self.keys = None
        try:
            yield
        finally:
            (self.positions, self.nearest, self.step_of, self.empty, self.audio, self.blocks,
             self.query_blocks, self.label_rows), self.keys = held, None

    def starts(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the decoder: does this call start the sequence (no cache, or an empty one)?"""
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers 5 calls it ``cache``
        self._fresh = cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0)

    def capture(self, module: nn.Module, inputs: tuple, states: torch.Tensor) -> None:
        """Forward hook on the final norm: a call that starts the sequence (it holds the audio tokens) sets the
        keys from its (B, L, H) output; calls continuing it on a cache keep them."""
        if self.positions is None or not self._fresh:
            return
        states = states if isinstance(states, torch.Tensor) else states[0]
        n = self.positions.shape[0]
        if states.shape[0] != n:  # each prompt repeated for its samples (adjacent): one copy of each is enough
            if states.shape[0] % n:
                raise ValueError(f"time pointer: a call of {states.shape[0]} rows for {n} audio rows")
            states = states.reshape(n, -1, *states.shape[1:])[:, 0]
        rows = self.positions.clamp_min(0)
        picked = states.gather(1, rows[..., None].expand(-1, -1, states.shape[-1])).to(self.k.weight.dtype)
        self.keys = self.k(picked)
        if self.k_option is not None:  # option-line keys through their own map
            option = (self.step_of >= self.count) & (self.step_of < self.slots)
            self.keys = torch.where(option[..., None], self.k_option(picked), self.keys)
        if self.before is not None:  # over the audio tokens only; the prompt's time tokens get none
            audio = self.audio
            context = running_max(self.before(picked), audio) + running_max(self.after(picked), audio, True)
            self.keys = self.keys + context * audio[..., None]
        if self.near_before is not None:
            near = window_means(picked, self.step_of.to(picked.dtype), self.audio, self.window)
            context = self.near_before(near[0]) + self.near_after(near[1])
            self.keys = self.keys + context * self.audio[..., None]

    def follow(self, index: torch.Tensor | None) -> None:
        """The next calls' rows are the audio rows ``index`` (a sampler that drops finished rows says which
        remain); None: rows map by repetition (``batch`` = k x the audio rows, each repeated k times, adjacent)."""
        self.row_index = index

    def _index(self, batch: int) -> torch.Tensor:
        """(batch,) the audio row of each row of a call of ``batch`` rows."""
        n = self.positions.shape[0]
        if self.row_index is not None:
            if len(self.row_index) != batch:
                raise ValueError(f"time pointer: a call of {batch} rows while following {len(self.row_index)}")
            return self.row_index
        if batch % n:
            raise ValueError(f"time pointer: a call of {batch} rows for {n} audio rows")
        return torch.arange(n, device=self.positions.device).repeat_interleave(batch // n)

    @contextlib.contextmanager
    def keeping(self, positions: torch.Tensor | None):
        """Within the block the LM head runs on the sequence positions ``positions`` (K,) only (HF's
        ``logits_to_keep``), so a packed call's blocks are read at those positions."""
        held, self.kept = self.kept, positions
        try:
            yield
        finally:
            self.kept = held

    def _query_blocks(self, idx: torch.Tensor, length: int) -> torch.Tensor | None:
        """(B, length) the packed block of each query position of this call, or None (one question per row).
        A call may be cut to a row's length (``by_row``) and read at ``kept`` positions only."""
        if self.query_blocks is None:
            return None
        qb = self.query_blocks[idx]
        qb = qb[:, self.kept] if self.kept is not None else qb[:, :length]
        return qb if qb.shape[1] == length else None

    def per_slot(self, scores: torch.Tensor, batch: int) -> torch.Tensor:
        """(B, L, T) key scores -> (B, L, slots): the log-sum-exp over each slot's keys (-inf: none)."""
        idx = self._index(batch)
        step_of = self.step_of[idx][:, None, :].expand_as(scores)  # padding goes to the spare slot ``slots``
        own = self._query_blocks(idx, scores.shape[1])
        if own is not None:
            # A packed block sees the audio and its own prompt's keys, not the other blocks' (spare slot).
            blocks = self.blocks[idx][:, None, :]
            step_of = torch.where((blocks < 0) | (blocks == own[:, :, None]), step_of, self.slots)
        # Each slot's own maximum: exact and stable however far apart the slots' scores are.
        shape = (*scores.shape[:2], self.slots + 1)
        top = scores.new_full(shape, -math.inf).scatter_reduce(2, step_of, scores.detach(), "amax")
        e = (scores - top.gather(2, step_of)).exp()
        sums = e.new_zeros(shape).scatter_add(2, step_of, e)
        return (sums.log() + top)[..., : self.slots]

    def per_step(self, scores: torch.Tensor, batch: int, slots: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, T) key scores -> (B, L, count) time-step scores: the log-sum-exp over the keys of each step
        (the audio tokens whose time embedding that step's token is, and the prompt's own time tokens of that
        step), or for a step without an audio token (past the clip) the score of the nearest audio token."""
        pointed = (self.per_slot(scores, batch) if slots is None else slots)[..., : self.count]
        idx = self._index(batch)
        near = self.nearest[idx][:, None, :].expand(-1, scores.shape[1], -1)
        return torch.where(self.empty[idx][:, None, :], scores.gather(2, near), pointed)

    def per_letter(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, L, slots) -> (B, L, n_letters): each option letter's score, 0 where the prompt has no such option."""
        letters = slots[..., self.count :]
        return torch.where(torch.isfinite(letters), letters, torch.zeros_like(letters))

    def add(self, module: nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        """Forward hook on the LM head: time-token logits += :meth:`per_step` of ``q(h) . k(audio tokens) / sqrt(H)``."""
        if self.positions is None:
            return logits
        h = inputs[0]
        if self.keys is None:
            return logits
        keys = self.keys[self._index(h.shape[0])]
        scores = torch.einsum("blh,bth->blt", self.q(h.to(self.q.weight.dtype)), keys) / math.sqrt(h.shape[-1])
        slots = self.per_slot(scores, h.shape[0])
        logits = logits.clone()
        logits[..., self.first : self.first + self.count] += self.per_step(scores, h.shape[0], slots).to(logits.dtype)
        if self.letter_ids is not None:
            letters = self.per_letter(slots).to(logits.dtype)
            ids = self.letter_ids.to(logits.device)
            for v in range(ids.shape[1]):  # each spelling of a letter (" B" after "→", "B" alone)
                have = ids[:, v] >= 0
                logits[..., ids[have, v]] += letters[..., have]
        return logits


def running_max(x: torch.Tensor, valid: torch.Tensor, later: bool = False) -> torch.Tensor:
    """(B, T, H) -> (B, T, H): at token ``j`` the per-channel maximum of ``x`` over the valid tokens before ``j``
    (``later``: after it), 0 where there are none. A causal state cannot know that a source never comes back;
    this maximum over the later tokens can (tokens are in time order)."""
    x = x.masked_fill(~valid[..., None], -math.inf)
    if later:
        x = x.flip(1)
    run = torch.cummax(x, dim=1).values
    run = torch.cat([run.new_full(run[:, :1].shape, -math.inf), run[:, :-1]], 1)  # strictly before
    run = run.flip(1) if later else run
    return run.masked_fill(run == -math.inf, 0.0)


def window_means(x: torch.Tensor, at: torch.Tensor, valid: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, H) states at times ``at`` (B, T) -> (mean of the valid states in ``[at - width, at)``, mean of those
    in ``(at, at + width]``), each (B, T, H), 0 where there are none; ``valid`` (B, T) bool, ``width`` in ``at``'s unit."""
    gap = at[:, None, :] - at[:, :, None]  # (B, T query, T key): how much later the key is
    ok = valid[:, None, :]
    out = []
    for inside in ((gap < 0) & (gap >= -width), (gap > 0) & (gap <= width)):
        w = (inside & ok).to(x.dtype)
        out.append(w @ x / w.sum(-1, keepdim=True).clamp_min(1.0))
    return out[0], out[1]


def final_norm(llm: nn.Module) -> nn.Module:
    """The LLM's last normalisation layer (its output is what the LM head reads)."""
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ConfigError("time_embedding.pointer needs an LLM whose decoder has a final norm (.norm)")
    return norm


def attach(pointer: TimePointer, llm: nn.Module) -> list:
    """Hook ``pointer`` into ``llm`` (final norm and LM head; the input embedding with label reads); returns the handles."""
    head, decoder = llm.get_output_embeddings(), llm.get_decoder()
    handles = [decoder.register_forward_pre_hook(pointer.starts, with_kwargs=True),
               final_norm(llm).register_forward_hook(pointer.capture), head.register_forward_hook(pointer.add)]
    if pointer.label_ids is not None:
        handles.append(llm.get_input_embeddings().register_forward_hook(pointer.embed_labels))
    return handles
