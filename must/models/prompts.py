"""The one prompt builder: chat prompt, host and MusT audio tokens, and answers laid out as model inputs.

:func:`pack_questions` packs several questions about one clip into one sequence (training: SFT, captions);
:meth:`must.models.lalm.MusicLALM.prompt_inputs` is the same layout with one question per row, under a plain
2-D mask (generation, GRPO, ``forward``). Token ids of prompt and answer texts are memoised per model.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from must.models.time_embedding import OPTION_LETTERS
from must.models.time_pointer import LABEL_LETTERS

if TYPE_CHECKING:
    from must.models.lalm import AudioEncoding, MusicLALM


def pack_questions(model: MusicLALM, encoding: AudioEncoding, questions: Sequence[Sequence[str]],
                   answers: Sequence[Sequence[str]] | None = None,
                   max_answer_tokens: int | None = None, block_masks: bool = True,
                   point: bool = True) -> dict[str, torch.Tensor]:
    """Several questions about one clip in one sequence: each question block sees the audio, not the others.

    Row ``b`` is ``[chat prefix][host tokens][MusT tokens]`` once, then for each question ``j`` the block
    ``[rest of the user turn + question j][assistant header][answer j + EOS]``. When the question comes
    before the music (``model.cfg.question_position`` ``before`` or ``both``) the audio tokens depend on
    it, so every question gets its own row (its question is then in the shared part too). Positions restart after
    the audio for every block, and a 4-D mask lets a block attend to the shared prefix and causally to
    itself only, so each block computes exactly what the unpacked prompt would (checked in the tests)
    while the audio runs once.

    Returns ``inputs_embeds`` (B, L, H), ``attention_mask`` (B, 1, L, L) additive float (0 = attend),
    ``position_ids`` (B, L), ``labels`` (B, L) (-100 but on answers + EOS), ``block`` (B, L) long
    (-1 on the shared part and padding, else the question's index in the flattened list),
    ``lengths`` (B,) long (each row's real tokens; the rest is right padding), ``n_blocks`` (total
    questions), ``audio_start`` (B,) long (where each row's MusT tokens start), ``clip`` (B,) long (the
    clip of ``encoding`` each row asks about) and ``time_marks`` (per row, its prompt's time tokens as
    (position, time step, block; -1 shared)). With a time pointer (``model.pointer``) it is told those rows,
    unless ``point`` is False (a caller that moves the rows tells it itself). Answers are cut to ``max_answer_tokens`` (None: ``model.cfg.max_answer_tokens``). Without
    ``block_masks`` the (B, 1, L, L) mask is not built (``attention_mask`` None: one question per row needs
    only a causal mask over ``lengths``, :meth:`~must.models.lalm.MusicLALM.prompt_inputs`).
    """
    dev = model.device
    cut = max_answer_tokens or model.cfg.max_answer_tokens
    audio = model.project(encoding)
    eos = model.tokenizer.eos_token_id
    ids_of = _text_ids_memo(model)
    # Lay every row out first (token ids and where they go, audio spans), then fill one padded tensor:
    # all text goes through the embedding in one call (one lookup and one backward, not one per piece).
    text_ids, text_at, audio_at, rows, must_at, clips, marks = [], [], [], [], [], [], []
    te = model.time_embedding
    pointing = model.pointer is not None and te.cfg.pointer_prompt  # pointer_prompt / read_prompt need time tokens
    options = model.pointer is not None and te.cfg.pointer_options
    reads: list[tuple[int, int, int, int]] = []  # read_prompt: (row, position, time step, clip) of prompt time tokens
    labelling = model.pointer is not None and model.pointer.label_ids is not None  # read_labels
    labelled: list[tuple[int, int, list[int], list[int]]] = []  # (row, label, its line's positions, answer positions)
    label_ids = [{i for i in ids.tolist() if i >= 0} for ids in model.pointer.label_ids] if labelling else []

    def prompt_keys(ids: list[int], at: int, block: int, text: str, r: int, b: int) -> list[tuple[int, int, int]]:
        """The pointer's marks (position, slot, block) of ``ids`` (the tokens of ``text``, placed from ``at`` on in
        row ``r``, about clip ``b``): its time tokens with ``pointer_prompt``, its option lines' last tokens (slot
        ``count + letter``) with ``pointer_options``; its time tokens also go to ``reads`` with ``read_prompt``.
        One scan of the ids, and none when neither option asks for their times."""
        times = ([(at + i, t - te.first) for i, t in enumerate(ids) if te.first <= t < te.first + te.count]
                 if pointing or te.cfg.read_prompt else [])
        if te.cfg.read_prompt:
            reads.extend((r, pos, step, b) for pos, step in times)
        marks = [(pos, step, block) for pos, step in times] if pointing else []
        if options:
            marks += [(at + i, model.pointer.count + letter, block) for i, letter in option_ends(model, text)]
        return marks

    flat = 0
    for b, qs, ans in _shared_groups(model, questions, answers):
        r = len(rows)
        before, first_after = model.prompt_parts(qs[0])
        ids = ids_of(before)
        text_ids += ids
        text_at += [(r, i) for i in range(len(ids))]
        row_marks = prompt_keys(ids, 0, -1, before, r, b)  # a question before the music: shared by the row's blocks
        row_lines = {k: words for k, words in label_lines(model, before)} if labelling else {}
        n = len(ids)
        pieces = []
        if encoding.host_embeds is not None:
            pieces.append(encoding.host_embeds[b][encoding.host_mask[b]].to(dev, audio.dtype))
        pieces.append(audio[b][encoding.mask[b].to(dev)])
        for piece in pieces:
            audio_at.append((r, n, piece))
            n += len(piece)
        must_at.append(n - len(pieces[-1]))  # the MusT tokens are the last piece
        clips.append(b)
        n_shared = n
        lab, blk, pos = [-100] * n_shared, [-1] * n_shared, list(range(n_shared))
        for j, q in enumerate(qs):
            after = first_after if j == 0 else model.prompt_parts(q)[1]
            ids = ids_of(after)
            a_ids = [] if ans is None else ids_of(ans[j])[:cut] + [eos]
            row_marks += prompt_keys(ids, n, flat, after, r, b)  # the question's, never the answer's: no label leaks
            m = len(ids) + len(a_ids)
            if labelling:  # each label line's read goes to that label's tokens in this block's answer
                lines = {**row_lines, **{k: [n + w for w in words] for k, words in label_lines(model, after)}}
                start = n + len(ids)
                for k, words in lines.items():
                    said = [start + i for i, t in enumerate(a_ids) if t in label_ids[k]]
                    labelled.append((r, k, words, said))
            m = len(ids) + len(a_ids)
            text_ids += ids + a_ids
            text_at += [(r, i) for i in range(n, n + m)]
            n += m
            lab += [-100] * len(ids) + a_ids
            blk += [flat] * m
            pos += list(range(n_shared, n_shared + m))
            flat += 1
        rows.append((lab, blk, pos))
        marks.append(row_marks)
    length = max(len(lab) for lab, _, _ in rows)
    bsz = len(rows)
    at = torch.tensor(text_at, dtype=torch.long, device=dev).reshape(-1, 2)
    with model.pointer.own_text() if labelling else contextlib.nullcontext():  # its answers' reads are added below
        emb = model.llm.get_input_embeddings()(torch.tensor(text_ids, dtype=torch.long, device=dev))
    # The wider of the projector's and the LLM's dtypes (a float32 projector beside a bf16 LLM is common).
    inputs = audio.new_zeros(bsz, length, model.hidden_size, dtype=torch.promote_types(audio.dtype, emb.dtype))
    inputs = inputs.index_put((at[:, 0], at[:, 1]), emb.to(inputs.dtype))
    for r, lo, piece in audio_at:
        inputs[r, lo: lo + len(piece)] = piece
    if labelling:
        inputs = _read_labels(model, inputs, labelled, generating=answers is None)
    if reads:
        inputs = _read_prompt_times(model, encoding, audio, inputs, reads)
    lab_t = torch.full((bsz, length), -100, dtype=torch.long)
    blk_t = torch.full((bsz, length), -1, dtype=torch.long)
    pos_t = torch.zeros(bsz, length, dtype=torch.long)
    real = torch.zeros(bsz, length, dtype=torch.bool)
    for i, (la, bl, po) in enumerate(rows):
        n = len(la)
        lab_t[i, :n] = torch.tensor(la)
        blk_t[i, :n] = torch.tensor(bl)
        pos_t[i, :n] = torch.tensor(po)
        real[i, :n] = True
    lab_t, blk_t, pos_t, real = (t.to(dev) for t in (lab_t, blk_t, pos_t, real))
    mask = None
    if block_masks:
        allowed = block_mask(blk_t, real)
        mask = torch.where(allowed, 0.0, torch.finfo(inputs.dtype).min).to(inputs.dtype)[:, None]
    audio_start = torch.tensor(must_at, dtype=torch.long, device=dev)
    clip = torch.tensor(clips, dtype=torch.long, device=dev)
    if point and model.pointer is not None:  # the time pointer reads these rows' audio (and prompt) time tokens
        # packed: each block points at its own prompt's times only
        model.point_at(encoding, audio_start, clip, marks, query_blocks=blk_t if block_masks else None)
    return {"inputs_embeds": inputs, "attention_mask": mask, "position_ids": pos_t, "labels": lab_t,
            "block": blk_t, "lengths": real.sum(1), "n_blocks": flat, "audio_start": audio_start, "clip": clip,
            "time_marks": marks}


def _read_prompt_times(model: MusicLALM, encoding: AudioEncoding, audio: torch.Tensor, inputs: torch.Tensor,
                       reads: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """``time_embedding.read_prompt``: ``inputs`` (B, L, H) with each prompt time token's read of its clip's
    audio (:meth:`~must.models.time_embedding.TimeEmbedding.read`) added; ``reads`` (row, position, step, clip)."""
    te = model.time_embedding
    at = torch.tensor(reads, dtype=torch.long, device=inputs.device)
    add = inputs.new_zeros(len(reads), inputs.shape[-1])
    for b in at[:, 3].unique().tolist():
        pick = at[:, 3] == b
        mask = encoding.mask[b].to(audio.device)
        seconds = at[pick, 2].to(audio.dtype) * te.cfg.resolution
        add[pick] = te.read(audio[b][mask], encoding.times[b].to(audio.device)[mask].to(audio.dtype),
                            seconds).to(add.dtype)
    return inputs.index_put((at[:, 0], at[:, 1]), add, accumulate=True)


def _read_labels(model: MusicLALM, inputs: torch.Tensor, labelled: list[tuple[int, int, list[int], list[int]]],
                 generating: bool) -> torch.Tensor:
    """``time_embedding.read_labels``: ``inputs`` (B, L, H) with each labelled line's read
    (:meth:`~must.models.time_pointer.TimePointer.read_lines`) added at its label's tokens in the answer;
    ``labelled`` (row, label, line positions, answer positions). For a generation prompt (``generating``) the
    pointer keeps the reads per row, for the tokens still to be generated."""
    pointer = model.pointer
    table = (inputs.new_zeros(inputs.shape[0], len(pointer.label_ids), inputs.shape[-1])
             if generating else None)  # (B, n_labels, H)
    if labelled:
        reads = pointer.read_lines([inputs[r, words] for r, _, words, _ in labelled]).to(inputs.dtype)
        said = [(i, r, p) for i, (r, _, _, at) in enumerate(labelled) for p in at]
        if said:
            i, r, p = (torch.tensor(x, dtype=torch.long, device=inputs.device) for x in zip(*said))
            inputs = inputs.index_put((r, p), reads[i], accumulate=True)
        if table is not None:
            r, k = (torch.tensor(x, dtype=torch.long, device=inputs.device) for x in zip(*[(r, k) for r, k, _, _ in labelled]))
            table = table.index_put((r, k), reads)
    pointer.set_labels(table)
    return inputs


#: A labelled line of a prompt: ``X: Suddenly the mix softens.`` (GTO's X, Y, Z, :data:`LABEL_LETTERS`).
_LABEL_LINE = re.compile(rf"(?m)^([{LABEL_LETTERS}]): (.*\S)")


def label_lines(model: MusicLALM, text: str) -> list[tuple[int, list[int]]]:
    """(label index in :data:`LABEL_LETTERS`, token indices in ``model.text_ids(text)`` of the line's text after
    ``X: ``) per labelled line of ``text`` (``time_embedding.read_labels``). Memoised per model; [] when none."""
    memo = _memo(_LABELS_MEMO, model)
    if text in memo:
        memo.move_to_end(text)
        return memo[text]
    spelled = model.spelled(text)
    out: list[tuple[int, list[int]]] = []
    lines = list(_LABEL_LINE.finditer(spelled))
    if lines:
        spans = model.tokenizer(spelled, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for m in lines:
            end = m.start(2) + len(m.group(2).split("<|")[0].rstrip())  # the chat template's <|im_end|> may follow
            words = [i for i, (a, b) in enumerate(spans) if b > m.start(2) and a < end]
            if words:
                out.append((LABEL_LETTERS.index(m.group(1)), words))
    memo[text] = out
    if len(memo) > IDS_MEMO_SIZE:
        memo.popitem(last=False)
    return out


#: An option line of a multiple-choice question: ``B. the drums come in`` (or ``(B) …``, ``B) …``), letters A-F.
_OPTION_LINE = re.compile(rf"(?m)^\(?([{OPTION_LETTERS}])[.)] .*\S")


def option_ends(model: MusicLALM, text: str) -> list[tuple[int, int]]:
    """(token index in ``model.text_ids(text)``, letter index 0-5) of the last token of each option line of
    ``text``: the one token whose state has read the whole option (``time_embedding.pointer_options``).
    Memoised per model; [] when the text has no options."""
    memo = _memo(_OPTIONS_MEMO, model)
    if text in memo:
        memo.move_to_end(text)
        return memo[text]
    spelled = model.spelled(text)
    out: list[tuple[int, int]] = []
    lines = list(_OPTION_LINE.finditer(spelled))
    if lines:
        starts = [a for a, _ in model.tokenizer(spelled, add_special_tokens=False,
                                                return_offsets_mapping=True)["offset_mapping"]]
        for m in lines:
            end = m.start() + len(m.group(0).split("<|")[0].rstrip())  # the chat template's <|im_end|> may follow
            last = max(i for i, a in enumerate(starts) if a < end)  # the token holding the line's last char
            out.append((last, OPTION_LETTERS.index(m.group(1))))
    memo[text] = out
    if len(memo) > IDS_MEMO_SIZE:
        memo.popitem(last=False)
    return out


#: Token ids of prompt and answer texts per model, so a question asked again (every epoch) is not
#: tokenised again. Assumes ``model.text_ids`` is a pure function of the text for a given tokenizer;
#: the memo starts afresh when the tokenizer object or its size changes.
_IDS_MEMO: weakref.WeakKeyDictionary[MusicLALM, tuple[tuple, OrderedDict]] = weakref.WeakKeyDictionary()
_OPTIONS_MEMO: weakref.WeakKeyDictionary[MusicLALM, tuple[tuple, OrderedDict]] = weakref.WeakKeyDictionary()
_LABELS_MEMO: weakref.WeakKeyDictionary[MusicLALM, tuple[tuple, OrderedDict]] = weakref.WeakKeyDictionary()
IDS_MEMO_SIZE = 65536


def _memo(store: weakref.WeakKeyDictionary, model: MusicLALM) -> OrderedDict:
    """``model``'s memo in ``store``, started afresh when its tokenizer object or size changes."""
    key = (id(model.tokenizer), len(model.tokenizer))
    held = store.get(model)
    if held is None or held[0] != key:
        held = store[model] = (key, OrderedDict())
    return held[1]


def _text_ids_memo(model: MusicLALM):
    """``model.text_ids``, memoised per model (least recently used texts dropped past ``IDS_MEMO_SIZE``)."""
    memo = _memo(_IDS_MEMO, model)

    def ids_of(text: str) -> list[int]:
        ids = memo.get(text)
        if ids is None:
            ids = memo[text] = model.text_ids(text)
            if len(memo) > IDS_MEMO_SIZE:
                memo.popitem(last=False)
        else:
            memo.move_to_end(text)
        return list(ids)

    return ids_of


def _shared_groups(model: MusicLALM, questions: Sequence[Sequence[str]],
                   answers: Sequence[Sequence[str]] | None):
    """(clip index, questions, answers or None) per packed row: all of a clip's questions share one row,
    unless the question comes before the music (``model.question_position``), when the audio tokens
    depend on the question and each question gets its own row."""
    for b, qs in enumerate(questions):
        ans = None if answers is None else answers[b]
        if model.cfg.question_position == "after":
            yield b, qs, ans
        else:
            for j, q in enumerate(qs):
                yield b, [q], None if ans is None else [ans[j]]


def block_mask(block: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, L) block ids (-1 = shared) and real-token mask -> (B, L, L) bool, True where query i may see key k.

    Causal; a key in the shared part is seen by every query, a key in a block only by its own block.
    Padding queries see themselves only (no all-masked rows, so no NaN).
    """
    n = block.shape[1]
    allowed = block[:, :, None] == block[:, None, :]  # same block (the shared part is block -1 too)
    allowed |= ((block == -1) & real)[:, None, :]  # the shared part is seen by every block
    allowed &= torch.ones(n, n, dtype=torch.bool, device=block.device).tril()
    allowed &= real[:, None, :] & real[:, :, None]
    allowed.diagonal(dim1=1, dim2=2)[~real] = True
    return allowed
