"""Text metrics for TAD descriptions: METEOR (nltk) and CLAP score (local CLAP weights only).

METEOR uses WordNet synonyms when a WordNet database is found (nltk's own ``corpora/wordnet``, or
Debian's ``wordnet-base`` in ``/usr/share/wordnet``), else exact and Porter-stem matching only:
:func:`meteor_mode` says which. Scores are per sentence, averaged over rows, in [0, 1].
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric

from must.metrics.temporal import _MeanMetric

log = logging.getLogger(__name__)

#: Where Debian's ``wordnet-base`` puts the WordNet 3.0 database (``apt-get install wordnet-base``).
DEBIAN_WORDNET = Path("/usr/share/wordnet")

# WordNet 3.0's lexicographer files (the `lexnames` file nltk needs; Debian's package leaves it out).
_LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"]
_LEX_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


class _NoWordNet:
    """Stands in for WordNet: no synonyms, so METEOR matches exact words and stems only."""

    def synsets(self, word: str, *args: Any, **kwargs: Any) -> list:
        return []


def _debian_wordnet_dir() -> Path | None:
    """A folder nltk can read: Debian's files (copied once) beside the ``lexnames`` file they lack."""
    if not (DEBIAN_WORDNET / "data.noun").exists():
        return None
    if (DEBIAN_WORDNET / "lexnames").exists():
        return DEBIAN_WORDNET
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "must" / "wordnet"
    for root in (home, Path(tempfile.mkdtemp(prefix="must-wordnet-"))):
        try:
            root.mkdir(parents=True, exist_ok=True)
            for src in DEBIAN_WORDNET.iterdir():
                dst = root / src.name
                if not dst.exists():
                    # a copy (28 MB, once): nltk refuses symlinks and hard links out of its root
                    shutil.copyfile(src, dst)
            lex = root / "lexnames"
            if not lex.exists():
                lines = [f"{i:02d}\t{name}\t{_LEX_POS[name.split('.')[0]]}" for i, name in enumerate(_LEXNAMES)]
                lex.write_text("\n".join(lines) + "\n")
            return root
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def load_wordnet() -> tuple[Any, str]:
    """(wordnet reader, mode): mode is ``"wordnet"`` (synonyms on) or ``"exact+stem"`` (no WordNet found)."""
    import nltk

    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet, "wordnet"
    except Exception:
        log.debug("nltk's own WordNet not usable", exc_info=True)
    root = _debian_wordnet_dir()
    if root is not None:
        try:
            from nltk.corpus.reader.wordnet import WordNetCorpusReader

            # nltk >= 3.9 only opens files under its data roots
            for allowed in {str(root), str(root.resolve()), str(DEBIAN_WORDNET)}:
                if allowed not in nltk.data.path:
                    nltk.data.path.append(allowed)

            class _Reader(WordNetCorpusReader):
                def map_wn(self, version: str = "wordnet") -> None:
                    # the OMW version map looks for nltk's own wordnet corpus; unneeded for synonyms
                    return None

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "multilingual functions are not available"
                reader = _Reader(str(root), None)
            reader.synsets("music")
            return reader, "wordnet"
        except Exception:
            log.debug("Debian WordNet at %s not usable", root, exc_info=True)
    return _NoWordNet(), "exact+stem"


def meteor_mode() -> str:
    """``"wordnet"`` when METEOR uses synonyms, ``"exact+stem"`` when no WordNet database was found."""
    return load_wordnet()[1]


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (no punkt model needed)."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", str(text or "").lower())


def meteor(prediction: str, references: Sequence[str] | str) -> float:
    """Sentence METEOR of ``prediction`` against one or several references, in [0, 1]; 0 for empty text."""
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import meteor_score

    refs = [references] if isinstance(references, str) else list(references)
    hyp = tokenize(prediction)
    refs_tok = [tokenize(r) for r in refs if tokenize(r)]
    if not hyp or not refs_tok:
        return 0.0
    return float(meteor_score(refs_tok, hyp, stemmer=_stemmer(PorterStemmer), wordnet=load_wordnet()[0]))


@functools.lru_cache(maxsize=1)
def _stemmer(cls: Any) -> Any:
    return cls()


class Meteor(_MeanMetric):
    """Mean sentence METEOR (nltk) over rows; WordNet synonyms when available (see :func:`meteor_mode`)."""

    def update(self, preds: Sequence[str | None], target: Sequence[str | Sequence[str]]) -> None:
        """``preds``: generated descriptions (None counts 0); ``target``: a reference or a list per row."""
        self._add([meteor(p or "", t) for p, t in zip(preds, target, strict=True)])


class ClapScore(Metric):
    """CLAP score of generated descriptions against reference descriptions, from a local CLAP folder.

    ``100 * max(cos(text_emb(pred), text_emb(ref)), 0)`` averaged over rows (CLIPScore's convention),
    here returned in [0, 1] like the other metrics. torchmetrics 1.9 has no CLAP metric, so the model is
    ``transformers.ClapModel`` loaded from ``model_dir`` (nothing is downloaded). Text-to-text: MusTBench
    rows carry no audio clip of the transition, so the reference description stands for it.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, model_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from transformers import AutoTokenizer, ClapModel

        # text-to-text needs only the text tower's tokenizer (a real CLAP folder ships a RoBERTa one)
        self.model = ClapModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        # RoBERTa-style positions start after the padding index: stay 2 short of the table
        self.max_length = int(self.model.config.text_config.max_position_embeddings) - 2
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        emb = self.model.get_text_features(**inputs)
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def scores(self, preds: Sequence[str | None], target: Sequence[str]) -> list[float]:
        """Per-row score in [0, 1]; empty predictions score 0."""
        keep = [i for i, p in enumerate(preds) if p and p.strip()]
        out = [0.0] * len(preds)
        if keep:
            a = self._embed([preds[i] for i in keep])
            b = self._embed([target[i] if isinstance(target[i], str) else target[i][0] for i in keep])
            for i, s in zip(keep, (a * b).sum(-1).clamp(min=0).tolist(), strict=True):
                out[i] = s
        return out

    def update(self, preds: Sequence[str | None], target: Sequence[str]) -> None:
        """``preds``: generated descriptions; ``target``: reference descriptions."""
        scores = self.scores(preds, target)
        self.total += float(sum(scores))
        self.count += len(scores)

    def compute(self) -> torch.Tensor:
        """Mean score in [0, 1]."""
        return self.total / self.count.clamp(min=1)
