"""WordNet for METEOR, offline.

nltk's METEOR matches synonyms through WordNet. nltk normally reads it from ``nltk_data``
(downloaded from the internet); the gateway must work without internet, so it also reads the
WordNet 3.0 database of Debian's ``wordnet-base`` package (``/usr/share/wordnet``, installed by
scripts/setup.sh and deploy/Dockerfile), the same database nltk's download holds. Debian ships
every file nltk reads but one, ``lexnames`` (the fixed list of the 45 lexicographer files,
lexnames(5WN)); :func:`load_wordnet` writes it, beside Debian's files, into a cache folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from .metrics import MetricUnavailable

__all__ = ["DEBIAN_WORDNET", "load_wordnet"]

DEBIAN_WORDNET = Path("/usr/share/wordnet")

#: lexnames(5WN) of WordNet 3.0: file number, lexicographer file, syntactic category.
LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1",
    "noun.artifact 1", "noun.attribute 1", "noun.body 1", "noun.cognition 1",
    "noun.communication 1", "noun.event 1", "noun.feeling 1", "noun.food 1", "noun.group 1",
    "noun.location 1", "noun.motive 1", "noun.object 1", "noun.person 1", "noun.phenomenon 1",
    "noun.plant 1", "noun.possession 1", "noun.process 1", "noun.quantity 1", "noun.relation 1",
    "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1", "verb.body 2",
    "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2",
    "adj.ppl 3",
)
_FILES = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")) + ("index.sense",)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    try:
        root = Path(base) / "medrega-gateway" / "nltk_data"
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        return Path(tempfile.mkdtemp(prefix="medrega-nltk-"))


def _from_debian(source: Path) -> Path:
    """An nltk-layout WordNet folder holding copies of Debian's files (28 MB; nltk refuses
    symbolic and hard links) plus ``lexnames``."""
    root = _cache_root()
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        target = folder / name
        if not target.is_file() or target.stat().st_size != (source / name).stat().st_size:
            partial = folder / f".{name}.partial"
            partial.unlink(missing_ok=True)
            shutil.copyfile(source / name, partial)
            partial.replace(target)
    lexnames = "".join(f"{n:02d}\t{entry.replace(' ', chr(9))}\n" for n, entry in enumerate(LEXNAMES))
    target = folder / "lexnames"
    if not target.is_file() or target.read_text(encoding="ascii") != lexnames:
        target.write_text(lexnames, encoding="ascii")
    return root


@lru_cache(maxsize=1)
def load_wordnet() -> Any:
    """nltk's WordNet reader: nltk_data's if installed, else Debian's database.

    Raises :class:`MetricUnavailable` saying what to install when neither is there.
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    try:
        path = nltk.data.find("corpora/wordnet")
    except LookupError:
        if not all((DEBIAN_WORDNET / name).is_file() for name in _FILES):
            raise MetricUnavailable(
                "METEOR needs WordNet: install Debian's wordnet-base package "
                f"(files under {DEBIAN_WORDNET}) or nltk's wordnet corpus"
            ) from None
        root = _from_debian(DEBIAN_WORDNET)
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
        path = nltk.data.find("corpora/wordnet")
    with warnings.catch_warnings():  # "multilingual functions are not available": not needed
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(path, None)
