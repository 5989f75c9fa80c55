"""Speaker verification and identification against enrolled voiceprints (cosine similarity).

Protocols import these::

    from asrhub_plugins.speakers.matching import identify, verify

    engine = await hub.speaker(); store = await hub.voiceprints()
    emb = engine.embed(audio)                                   # in the executor
    match = identify(emb, store, engine.default_threshold, engine=engine.name)
    result = verify(emb, store.get("user_001"), engine.default_threshold)

A voiceprint only compares with embeddings of the engine that made it: a different dimension
is never compared; ``engine=`` also skips voiceprints made by another engine of the same size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from asrhub.engine import EngineError, Voiceprint, VoiceprintStore, cosine

Embedding = npt.NDArray[np.float32]


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


def identify(embedding: Embedding, store: VoiceprintStore | Iterable[Voiceprint], threshold: float,
             *, engine: str | None = None) -> Match | None:
    """The enrolled speaker most similar to ``embedding`` if the score reaches ``threshold``,
    else None. ``store`` is a VoiceprintStore or any iterable of voiceprints."""
    voiceprints = store.list() if isinstance(store, VoiceprintStore) else store
    best: Match | None = None
    for vp in voiceprints:
        if vp.embedding.shape != embedding.shape or (engine is not None and vp.engine != engine):
            continue
        value = cosine(embedding, vp.embedding)
        if best is None or value > best.score:
            best = Match(vp.speaker_id, vp.name, value)
    return best if best is not None and best.score >= threshold else None
