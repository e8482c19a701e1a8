"""Reading model output: times, intervals, several intervals, option letters.

Every parser returns a :class:`Parsed` and never raises on model text: unparsable or impossible output
(``23:76``, an interval that ends before it starts, a letter that is not an option) is a miss with a
``reason``. Times are seconds (float). Formatting is in :mod:`must.timecode`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# A clock time: H:MM:SS, MM:SS or M:SS, optional decimals; seconds (and minutes under hours) are
# captured with up to 2 digits so that "23:76" is read, then refused with a reason.
_CLOCK = r"(?:\d{1,2}:)?\d{1,3}:\d{1,2}(?:\.\d+)?"
_SECONDS = r"\d+(?:\.\d+)?\s*(?:seconds?|secs?|s)\b"
_TIME = rf"(?:{_CLOCK}|{_SECONDS})"
_TIME_RE = re.compile(rf"(?<![\d:.]){_TIME}(?![\d:])", re.IGNORECASE)
# Interval: two times joined by hyphen, en dash, em dash or "to"; "30-45 s" (unit once, at the end) too.
_DASH = r"\s*(?:-|\u2013|\u2014|\bto\b)\s*"
_BARE_PAIR_RE = re.compile(
    rf"(?<![\d:.])(\d+(?:\.\d+)?){_DASH}(\d+(?:\.\d+)?)\s*(?:seconds?|secs?|s)\b", re.IGNORECASE
)
_INTERVAL_RE = re.compile(rf"(?<![\d:.])({_TIME}){_DASH}({_TIME})(?![\d:])", re.IGNORECASE)
_ANSWER_TAG_RE = re.compile(r"</?\s*answer\s*>", re.IGNORECASE)
_BARE_NUMBER_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Parsed:
    """Result of reading model text: ``value`` when it worked, else ``None`` and a ``reason``."""

    value: Any
    """float seconds (time), (start, end) seconds (interval), list of those (intervals), or a letter."""
    reason: str | None = None
    """Why it failed (None on success)."""
    clean: bool = True
    """True when the text held nothing but the answer (tags, punctuation and whitespace aside)."""

    @property
    def ok(self) -> bool:
        """Whether a value was read."""
        return self.reason is None

    def to_json(self) -> Any:
        """The value in a JSON-friendly form (tuples become lists)."""
        if isinstance(self.value, tuple):
            return list(self.value)
        if isinstance(self.value, list):
            return [list(v) if isinstance(v, tuple) else v for v in self.value]
        return self.value


def _miss(reason: str) -> Parsed:
    return Parsed(None, reason, clean=False)


def completion_text(completion: Any) -> str:
    """The text of a completion as TRL passes it: a string, or chat messages (the last assistant's content)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion_text(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        if all(isinstance(m, dict) and "role" in m for m in completion):
            assistant = [m for m in completion if m.get("role") == "assistant"] or list(completion)
            return completion_text(assistant[-1].get("content", ""))
        # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in completion)
    return str(completion)


def _strip(text: Any) -> str:
    return _ANSWER_TAG_RE.sub(" ", completion_text(text)).strip()


def _token_seconds(token: str) -> tuple[float | None, str | None]:
    """Seconds of one time token, or (None, reason) when it is impossible."""
    tok = token.strip().lower()
    if ":" not in tok:
        number = re.match(r"\d+(?:\.\d+)?", tok)
        return (float(number.group()), None) if number else (None, f"not a time: {token!r}")
    parts = tok.split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return None, f"not a time: {token!r}"
    if nums[-1] >= 60:
        return None, f"impossible time {token!r}: seconds field {parts[-1]} >= 60"
    if len(nums) == 3:
        if nums[1] >= 60:
            return None, f"impossible time {token!r}: minutes field {parts[1]} >= 60"
        return nums[0] * 3600 + nums[1] * 60 + nums[2], None
    return nums[0] * 60 + nums[1], None


def _is_clean(text: str, span: tuple[int, int]) -> bool:
    rest = text[: span[0]] + text[span[1] :]
    return re.fullmatch(r"[\s.,;:!()\[\]*\"'`]*", rest) is not None


def parse_time(text: Any) -> Parsed:
    """Read the first time in ``text`` (``M:SS``, ``MM:SS``, ``H:MM:SS``, ``45 s``, ``45.5 seconds``,
    a bare number of seconds, ``<ANSWER> 00:30``) as seconds."""
    s = _strip(text)
    if not s:
        return _miss("empty output")
    bare = _BARE_NUMBER_RE.match(s)
    if bare:
        return Parsed(float(bare.group(1)))
    match = _TIME_RE.search(s)
    if not match:
        return _miss("no time found")
    seconds, reason = _token_seconds(match.group())
    if reason:
        return _miss(reason)
    return Parsed(seconds, clean=_is_clean(s, match.span()))


def time_tokens(text: Any) -> list[tuple[str, Parsed]]:
    """Every clock time or seconds value written in ``text``, in order: (as written, seconds or a miss with a
    reason). ``16:48–23:76`` gives 1008 s and a miss, which :func:`parse_time` (it stops at the first) never sees."""
    tokens = []
    for match in _TIME_RE.finditer(_strip(text)):
        seconds, reason = _token_seconds(match.group())
        tokens.append((match.group().strip(), _miss(reason) if reason else Parsed(seconds)))
    return tokens


def parse_intervals(text: Any) -> Parsed:
    """Read every interval in ``text`` (``0:57–1:12``, ``0:57 - 1:12``, ``57 s to 72 s``, ``30-45 s``,
    several separated by anything) as a list of (start, end) seconds, in the order written."""
    s = _strip(text)
    if not s:
        return _miss("empty output")
    found: list[tuple[int, int, str, str]] = []
    for match in _INTERVAL_RE.finditer(s):
        found.append((match.start(), match.end(), match.group(1), match.group(2)))
    taken = [(a, b) for a, b, _, _ in found]
    for match in _BARE_PAIR_RE.finditer(s):
        if not any(a <= match.start() < b for a, b in taken):
            found.append((match.start(), match.end(), match.group(1), match.group(2)))
    if not found:
        if _TIME_RE.search(s) or _BARE_NUMBER_RE.match(s):
            return _miss("a single time, not an interval")
        return _miss("no interval found")
    found.sort()
    intervals = []
    for _, _, first, second in found:
        start, reason = _token_seconds(first)
        end, reason2 = _token_seconds(second)
        if reason or reason2:
            return _miss(reason or reason2)
        if end < start:
            return _miss(f"interval ends before it starts: {first.strip()} > {second.strip()}")
        intervals.append((start, end))
    rest = s
    for a, b, _, _ in sorted(found, reverse=True):
        rest = rest[:a] + rest[b:]
    clean = re.fullmatch(r"[\s.,;:!()\[\]*\"'`]*(?:and[\s.,;]*)*", rest, re.IGNORECASE) is not None
    return Parsed(intervals, clean=clean)


def parse_interval(text: Any) -> Parsed:
    """Read exactly one interval; several is a miss (use :func:`parse_intervals` for MTR answers)."""
    parsed = parse_intervals(text)
    if not parsed.ok:
        return parsed
    if len(parsed.value) != 1:
        return _miss(f"{len(parsed.value)} intervals, expected one")
    return Parsed(parsed.value[0], clean=parsed.clean)


_OPTION_PATTERNS = (
    # whole answer is the letter in a dressing: C / (C) / C. / [C] / **C**
    re.compile(r"^[\s*\"'`]*[(\[]?([A-Z])[)\]]?[\s.*\"'`]*$"),
    # starts with the letter and a delimiter: "C) text", "C. text", "C: text", "(C) text"
    re.compile(r"^[\s*\"'`]*[(\[]?([A-Z])(?:[).:\]]|\s*[-\u2013\u2014]\s)"),
    # "Answer: C", "The answer is (C)", "Option C", "choice C"
    re.compile(r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*[*(\[]*([A-Z])\b(?![a-z'])", re.IGNORECASE),
    # a lone parenthesised letter anywhere: "... so (C)"
    re.compile(r"\(([A-Z])\)"),
)


def parse_option(text: Any, letters: str = "ABCDEF") -> Parsed:
    """Read an option letter (``C``, ``(C)``, ``C.``, ``Answer: C``, ``C) text…``); one not in ``letters``
    is a miss."""
    s = _strip(text)
    if not s:
        return _miss("empty output")
    if len(s) == 1 and s.isalpha():
        s = s.upper()
    for i, pattern in enumerate(_OPTION_PATTERNS):
        match = pattern.search(s)
        if match:
            letter = match.group(1).upper()
            if letter not in letters:
                return _miss(f"letter {letter} is not an option ({letters[0]}-{letters[-1]})")
            return Parsed(letter, clean=i == 0 or _is_clean(s, match.span()))
    return _miss("no option letter found")


#: Option letters per multiple-choice task (GTO has the six orders of X, Y, Z).
OPTION_LETTERS = {"LTR": "ABCD", "GTO": "ABCDEF"}


def tsg_kind(qa_type: Any, question: str = "") -> str:
    """``onset`` or ``offset`` for a TSG row: from ``qa_type``, else guessed from the question's wording."""
    kind = str(qa_type or "").lower()
    if "off" in kind:
        return "offset"
    if "on" in kind:
        return "onset"
    q = question.lower()
    return "offset" if any(w in q for w in ("disappear", "last", "stop", "end", "fade out")) else "onset"


def parse_answer(task: str, text: Any) -> Parsed:
    """Read a completion the way ``task`` expects: a time (TSG), a letter (LTR, GTO), intervals (MTR),
    free text (TAD: any non-empty text)."""
    task = str(task).upper()
    if task == "TSG":
        return parse_time(text)
    if task in OPTION_LETTERS:
        return parse_option(text, OPTION_LETTERS[task])
    if task == "MTR":
        return parse_intervals(text)
    if task == "TAD":
        s = _strip(text)
        return Parsed(s) if s else _miss("empty output")
    return _miss(f"unknown task {task!r}")
