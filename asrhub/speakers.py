"""Speaker verification and identification against enrolled voiceprints (cosine similarity),
over the :class:`~asrhub.engine.SpeakerEngine` / :class:`~asrhub.engine.VoiceprintStore`
interfaces, so any protocol reaches them through the hub without importing an engine plugin::

    from asrhub.speakers import identify, verify

    engine = await hub.speaker(); store = await hub.voiceprints()
    emb = engine.embed(audio)                                   # in the executor
    match = identify(emb, store, engine.default_threshold, engine=engine.name)
    result = verify(emb, store.get("user_001"), engine.default_threshold)

A voiceprint only compares with embeddings of the engine that made it: a different dimension
is never compared; ``engine=`` also skips voiceprints made by another engine of the same size.

:func:`check_speaker_id` is the one rule for ids a client may register (charset and length).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from asrhub.engine import EngineError, Voiceprint, VoiceprintStore, cosine

Embedding = npt.NDArray[np.float32]

MAX_SPEAKER_ID_LENGTH = 64
# Besides letters, marks and digits of any script: what ids such as "user_001", "j.doe@site",
# "team-a:alice" need. No slash, quote, angle bracket, control or space character.
_ID_PUNCTUATION = frozenset("_-.@:+")


class Match(NamedTuple):
    speaker_id: str
    name: str
    score: float


class Verification(NamedTuple):
    accepted: bool  # score >= threshold
    score: float
    threshold: float


class EngineMismatch(EngineError):
    """The voiceprint was made by another speaker engine: re-enrol with the current one."""


@runtime_checkable
class SearchableStore(Protocol):
    """A voiceprint store that answers :func:`closest` itself (e.g. from an in-memory matrix)
    instead of handing out every voiceprint per query."""

    def closest(self, embedding: Embedding, *, engine: str | None = None) -> Match | None: ...


def score(embedding: Embedding, voiceprint: Voiceprint) -> float:
    if voiceprint.embedding.shape != embedding.shape:
        raise EngineMismatch(
            f"voiceprint {voiceprint.speaker_id!r} was enrolled with engine {voiceprint.engine!r} "
            f"({voiceprint.embedding.shape[0]}-dim); this embedding is {embedding.shape[0]}-dim: "
            "enrol the speaker again")
    return cosine(embedding, voiceprint.embedding)


def verify(embedding: Embedding, voiceprint: Voiceprint, threshold: float) -> Verification:
    """Is ``embedding`` the speaker of ``voiceprint``? Raises :class:`EngineMismatch` if the two
    come from different engines' embedding spaces."""
    value = score(embedding, voiceprint)
    return Verification(value >= threshold, value, threshold)


def closest(embedding: Embedding, store: VoiceprintStore | Iterable[Voiceprint], *,
            engine: str | None = None) -> Match | None:
    """The enrolled speaker most similar to ``embedding`` whatever the score (None when no
    voiceprint of this engine exists): an unknown speaker can still report how close the
    nearest one came."""
    if isinstance(store, SearchableStore):
        return store.closest(embedding, engine=engine)
    voiceprints = store.list() if isinstance(store, VoiceprintStore) else store
    best: Match | None = None
    for vp in voiceprints:
        if vp.embedding.shape != embedding.shape or (engine is not None and vp.engine != engine):
            continue
        value = cosine(embedding, vp.embedding)
        if best is None or value > best.score:
            best = Match(vp.speaker_id, vp.name, value)
    return best


def identify(embedding: Embedding, store: VoiceprintStore | Iterable[Voiceprint], threshold: float,
             *, engine: str | None = None) -> Match | None:
    """The enrolled speaker most similar to ``embedding`` if the score reaches ``threshold``,
    else None. ``store`` is a VoiceprintStore or any iterable of voiceprints."""
    best = closest(embedding, store, engine=engine)
    return best if best is not None and best.score >= threshold else None


def check_speaker_id(value: str) -> str:
    """A speaker id a client may register: 1 to :data:`MAX_SPEAKER_ID_LENGTH` characters of
    letters, marks and digits (any script) and ``_ - . @ : +``, not starting with ``.``.
    Returns it; raises :class:`ValueError` saying what is wrong (never echoing the id)."""
    if not value:
        raise ValueError("the speaker id is empty")
    if len(value) > MAX_SPEAKER_ID_LENGTH:
        raise ValueError(f"the speaker id is longer than {MAX_SPEAKER_ID_LENGTH} characters")
    if value.startswith("."):
        raise ValueError("the speaker id must not start with '.'")
    for ch in value:
        if ch in _ID_PUNCTUATION:
            continue
        if unicodedata.category(ch)[0] not in "LMN":
            raise ValueError("the speaker id may hold letters, digits and _ - . @ : + only "
                             f"(found U+{ord(ch):04X})")
    return value
