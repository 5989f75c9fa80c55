"""Speaker diarization of a transcribed recording, on the hub's shared speaker engine.

One embedding per span (an ASR segment or a VAD speech region: the middle ``MAX_EMBED_S`` of
it; spans under ``MIN_EMBED_S`` take their nearest neighbour's speaker), agglomerative
clustering on cosine distance, the number of speakers estimated by a distance threshold.
Clusters can then be named after reference voices (enrolled voiceprints, or samples a client
sent) with :func:`name_clusters`.

:func:`cluster`, :func:`fill_unlabelled` and :func:`name_clusters` are pure functions on numpy
arrays; :func:`embed_spans` / :func:`speaker_labels` run the embeddings in the hub's inference
executor, in calls of at most ``EMBED_BATCH_S`` seconds of audio, and degrade to "no
speakers" (None, a logged warning) when there is no working speaker engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import structlog

from asrhub.engine import SAMPLE_RATE, Audio, EngineError, cosine
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority

if TYPE_CHECKING:
    from asrhub.hub import Hub

log = structlog.get_logger("asrhub.diarize")

# Calibrated on testdata/ with resemblyzer (31 labelled clips, every pair): same-speaker cosine
# similarity 0.69-0.92 (5th percentile 0.74), different-speaker 0.36-0.77 (95th percentile 0.64).
# Average linkage merges clusters closer than 1 - 0.70 in cosine distance.
DEFAULT_DISTANCE_THRESHOLD = 0.30
MIN_EMBED_S = 1.0  # shorter spans take the speaker of their nearest neighbour
MAX_EMBED_S = 8.0  # of a longer one only the middle is embedded (enough for a voice)
EMBED_BATCH_S = 30.0  # audio seconds of embeddings per executor call

Embedding = npt.NDArray[np.float32]
Span = tuple[float, float]  # seconds


def cluster(embeddings: npt.NDArray[np.float32], *, threshold: float = DEFAULT_DISTANCE_THRESHOLD,
            max_speakers: int = 8) -> list[int]:
    """Cluster labels (0, 1, ... in order of first appearance) for each embedding row."""
    count = len(embeddings)
    if count == 0:
        return []
    if count == 1:
        return [0]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    distances = np.clip(pdist(np.asarray(embeddings, dtype=np.float64), metric="cosine"), 0.0, 2.0)
    tree = linkage(distances, method="average")
    labels = fcluster(tree, t=threshold, criterion="distance")
    if max_speakers > 0 and labels.max() > max_speakers:
        labels = fcluster(tree, t=max_speakers, criterion="maxclust")
    return _first_appearance(labels.tolist())


def _first_appearance(labels: Sequence[int]) -> list[int]:
    order: dict[int, int] = {}
    return [order.setdefault(label, len(order)) for label in labels]


def fill_unlabelled(spans: Sequence[tuple[float, float]], labels: Sequence[int | None]) -> list[int]:
    """Give each span without a label (too short to embed) the label of the nearest labelled
    span in time; all 0 when nothing is labelled."""
    known = [(i, spans[i]) for i, label in enumerate(labels) if label is not None]
    if not known:
        return [0] * len(spans)
    filled = []
    for i, label in enumerate(labels):
        if label is not None:
            filled.append(label)
            continue
        start, end = spans[i]
        middle = (start + end) / 2
        nearest = min(known, key=lambda item: abs((item[1][0] + item[1][1]) / 2 - middle))
        filled.append(int(labels[nearest[0]]))  # type: ignore[arg-type]
    return _first_appearance(filled)


def name_clusters(labels: Sequence[int], embeddings: Mapping[int, Embedding],
                  references: Mapping[str, Embedding], threshold: float) -> dict[int, str]:
    """Names for clusters: each cluster's mean embedding (over the spans that were embedded)
    against each reference voice; the best pairs at or over ``threshold`` are taken greedily,
    one name per cluster and one cluster per name. Clusters left out get no entry."""
    members: dict[int, list[Embedding]] = {}
    for index, embedding in embeddings.items():
        members.setdefault(labels[index], []).append(embedding)
    pairs = []
    for label, found in members.items():
        centre = np.mean(np.stack(found), axis=0)
        for name, reference in references.items():
            if reference.shape == centre.shape:
                pairs.append((cosine(centre, reference), label, name))
    names: dict[int, str] = {}
    for value, label, name in sorted(pairs, reverse=True):
        if value < threshold:
            break
        if label not in names and name not in names.values():
            names[label] = name
    return names


def embed_window(span: Span) -> tuple[int, int]:
    """Sample offsets of the part of ``span`` that is embedded (its middle ``MAX_EMBED_S``)."""
    start, end = span
    trim = max(0.0, (end - start - MAX_EMBED_S) / 2)
    return int((start + trim) * SAMPLE_RATE), int((end - trim) * SAMPLE_RATE)


async def embed_spans(hub: Hub, audio: Audio, spans: Sequence[Span], *,
                      priority: Priority = Priority.BATCH, timeout: float | None = 3600,
                      progress: Callable[[float], None] | None = None) -> dict[int, Embedding] | None:
    """Embeddings of the spans of at least ``MIN_EMBED_S`` (by span index; a span the engine
    cannot embed is left out), or None without a working speaker engine."""
    try:
        speaker = await hub.speaker()
    except Exception as exc:  # noqa: BLE001 - diarization is optional: degrade, never fail
        log.warning("diarization_unavailable", error=str(exc), fallback="one speaker")
        return None
    if speaker is None:
        log.warning("diarization_unavailable", error="no speaker engine", fallback="one speaker")
        return None
    wanted = [i for i, (a, b) in enumerate(spans) if b - a >= MIN_EMBED_S]

    def embed_many(indices: list[int]) -> list[Embedding | None]:
        out: list[Embedding | None] = []
        for i in indices:
            try:
                out.append(np.asarray(speaker.embed(audio[slice(*embed_window(spans[i]))]),
                                      dtype=np.float32))
            except EngineError:  # too little speech in this span: its neighbours decide
                out.append(None)
        return out

    batches: list[list[int]] = [[]]
    seconds = 0.0
    for i in wanted:
        if seconds >= EMBED_BATCH_S:
            batches.append([])
            seconds = 0.0
        batches[-1].append(i)
        seconds += min(MAX_EMBED_S, spans[i][1] - spans[i][0])
    embeddings: dict[int, Embedding] = {}
    try:
        for batch in batches:
            if not batch:
                continue
            found = await hub.executor.run(embed_many, batch, priority=priority,
                                           engine=getattr(speaker, "name", None), timeout=timeout)
            embeddings.update((i, e) for i, e in zip(batch, found, strict=True) if e is not None)
            if progress is not None:
                progress(len(embeddings) / max(1, len(wanted)))
    except Exception as exc:  # noqa: BLE001 - a failing speaker engine must not fail the caller
        if isinstance(exc, ExecutorBusy | ExecutorClosed):
            raise  # the caller's to report (busy / shutting down), not a missing engine
        log.warning("diarization_failed", error=str(exc), fallback="one speaker")
        return None
    return embeddings


def labels_from_embeddings(spans: Sequence[Span], embeddings: Mapping[int, Embedding], *,
                           threshold: float = DEFAULT_DISTANCE_THRESHOLD,
                           max_speakers: int = 8) -> list[int]:
    """A speaker label per span (0, 1, ... by first appearance) from the embeddings of some of
    them (by span index, e.g. collected piece by piece); the rest take their neighbour's.
    Raises ImportError without scipy (the "speaker" extra)."""
    labels: list[int | None] = [None] * len(spans)
    if embeddings:
        order = sorted(embeddings)
        found = cluster(np.stack([embeddings[i] for i in order]), threshold=threshold,
                        max_speakers=max_speakers)
        for i, label in zip(order, found, strict=True):
            labels[i] = label
    result = fill_unlabelled(spans, labels)
    log.info("diarized", spans=len(spans), embedded=len(embeddings), speakers=len(set(result)))
    return result


async def speaker_labels(hub: Hub, audio: Audio, spans: Sequence[Span], *,
                         threshold: float = DEFAULT_DISTANCE_THRESHOLD, max_speakers: int = 8,
                         priority: Priority = Priority.BATCH,
                         progress: Callable[[float], None] | None = None,
                         ) -> tuple[list[int], dict[int, Embedding]] | None:
    """A speaker label per span (0, 1, ... by first appearance) and the embeddings it was
    computed from, or None without a working speaker engine (or without scipy)."""
    embeddings = await embed_spans(hub, audio, spans, priority=priority, progress=progress)
    if embeddings is None:
        return None
    try:
        return labels_from_embeddings(spans, embeddings, threshold=threshold,
                                      max_speakers=max_speakers), embeddings
    except ImportError as exc:  # scipy comes with the "speaker" extra
        log.warning("diarization_unavailable", error=str(exc), fallback="one speaker")
        return None
