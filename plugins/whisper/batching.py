"""Cross-session batching of Whisper utterance decodes.

Every session's stream calls :meth:`WhisperEngine.decode` from its own executor thread and
waits for the text. Instead of each call running the model on its own (CTranslate2 runs one
call at a time per worker, so concurrent finals used to queue behind each other while the
model worked on a batch of one), the calls meet in a :class:`DecodeBatcher`:

- A caller that finds a batch lane free (``concurrency`` lanes: the engine's CTranslate2
  workers, one per core on a CPU, each decoding with one thread) becomes a *leader*: if other
  decodes were asked for recently it waits up to ``gather_s`` (a few milliseconds, bounded)
  for more to arrive,
  then takes a batch off the queue and runs it as one engine call (one batched encoder pass,
  one batched generate). Calls that arrive while a batch runs queue up and go together in the
  next one; the leader keeps leading until its own request is done, then hands over.
- Finals before partials: while any final is waiting, a batch holds only finals, and a live
  stream's final goes before a file's (the executor's priority of the call). Within a class,
  requests go in start-time fair order between sessions (*flows*), as in the executor: a
  request's tag is the later of the tag last taken and its session's previous tag + 1; the
  lowest tag leads, and a batch takes one request per session before a second one of the same
  session, so a client that keeps many decodes queued cannot push the others' back.
- A batch holds requests that the model can run together: the same length of previous-text
  prompt (CTranslate2 wants the start token at the same position in every row) and the same
  encoder window (windows grow in 5 s steps: most finals share 15 s, most partials 10 s).
- Only windows up to ``max_window`` are batched. Measured on 2 CPU cores (tiny.en, 16 decodes
  asked for at once): 10 s windows finished in 1.6 s batched (4-8) against 2.6 s one by one,
  but 20 s windows took 4.3-4.5 s batched (2-3) against 3.2 s one by one: the decoder steps
  that batching shares are most of a short-window decode and little of a long one, whose
  encoder pass only gets slower in a batch. A GPU batches both.
- Batching does not change text: each row of a batched CTranslate2 call computes what the
  same row computes alone (greedy decoding; tested), and every request keeps its own token
  budget, so a batch-mate's longer budget never lengthens its text.

No thread of its own: the leader is one of the callers (an executor worker, already niced
below the event loop), so there is nothing to start or stop.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

RECENT_S = 1.0  # decodes asked for within this long mean others may be on their way


@dataclass(eq=False)
class DecodeRequest:
    """One utterance to decode, and (once ``done``) its result."""

    features: np.ndarray  # log-mel frames, (n_mels, window)
    window: int  # mel frames the encoder sees
    language: str | None  # None: detect it from the encoder output
    previous: list[int]  # the previous-text prompt ([sot_prev, *tokens]) or []
    budget: int  # new tokens at most
    final: bool  # a final (or file) result: goes first
    live: bool = True  # asked for by a live stream (finals of these go before file decodes)
    flow: str = ""  # the session that asked (fair turns between sessions)
    tag: int = 0  # fair-queuing start tag, set by the batcher
    submitted: float = field(default_factory=time.perf_counter)
    # results
    tokens: list[int] = field(default_factory=list)
    score: float = 0.0
    no_speech_prob: float = 1.0
    language_probability: float = 1.0
    window_used: int = 0
    batch_size: int = 0
    done: bool = False
    cancelled: bool = False  # withdrawn before it ran (:meth:`DecodeBatcher.cancel`): no result
    error: BaseException | None = None

    def fits(self, other: DecodeRequest) -> bool:
        """Whether ``other`` can share a batch led by this request."""
        return (len(other.previous) == len(self.previous) and other.final == self.final
                and other.window == self.window)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0
    gather_waits: int = 0

    @property
    def mean_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


class DecodeBatcher:
    """Gathers decode requests from many threads into batched engine calls (see the module
    docstring). ``run_batch`` fills in each request's results; an exception it raises goes to
    every request of that batch."""

    def __init__(self, run_batch: Callable[[list[DecodeRequest]], None], *,
                 max_batch: int = 8, gather_s: float = 0.01,
                 max_window: int | None = None, concurrency: int = 1) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_window = max_window  # longer windows run one at a time (None: no limit)
        self.gather_s = max(0.0, gather_s)
        self._cond = threading.Condition()
        self._queue: list[DecodeRequest] = []
        self._leading = 0  # batches running (at most ``concurrency``)
        self.concurrency = max(1, concurrency)
        self._recent: deque[float] = deque(maxlen=4)
        self._vtime = 0  # the tag of the last batch's leader
        self._next_tag: dict[str, int] = {}  # flow -> the tag its next request gets at the earliest
        self.stats = BatchStats()

    @property
    def busy(self) -> bool:
        """A batch is running or requests are waiting: a new decode would queue."""
        return bool(self._leading) or bool(self._queue)

    def submit(self, request: DecodeRequest) -> DecodeRequest:
        """Queue ``request`` and return once it is decoded (raises the batch's error)."""
        with self._cond:
            now = time.perf_counter()
            others_recently = bool(self._recent) and now - self._recent[-1] < RECENT_S
            self._recent.append(now)
            self._enqueue(request)
            self._cond.notify_all()
            while not request.done:
                if self._leading >= self.concurrency or not self._queue:
                    self._cond.wait()
                    continue
                self._leading += 1
                try:
                    if others_recently or len(self._queue) > 1:
                        self._gather()
                    others_recently = True  # after the first batch, gather each time
                    if not self._queue:
                        continue  # its own request was withdrawn while gathering
                    batch = self._take()
                    self._cond.release()
                    try:
                        self._execute(batch)
                    finally:
                        self._cond.acquire()
                finally:
                    self._leading -= 1
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request

    def cancel(self, request: DecodeRequest) -> bool:
        """Withdraw ``request`` if it is still waiting (any thread): its caller returns at once
        with ``cancelled`` set. False when it already runs or ran. A stream withdraws a partial
        when its final is asked for: the final must not wait for a partial that waits behind
        every other session's final."""
        with self._cond:
            if request.done or not any(r is request for r in self._queue):
                return False
            self._queue = [r for r in self._queue if r is not request]
            request.cancelled = request.done = True
            self._cond.notify_all()
            return True

    # ------------------------------------------------------------------ leader side (lock held)

    def _pool(self) -> list[DecodeRequest]:
        """The most urgent class of waiting requests: live finals, other finals, partials."""
        finals = [r for r in self._queue if r.final]
        return [r for r in finals if r.live] or finals or self._queue

    def _enqueue(self, request: DecodeRequest) -> None:
        request.tag = max(self._vtime, self._next_tag.get(request.flow, 0))
        self._next_tag[request.flow] = request.tag + 1
        if len(self._next_tag) > 4096:  # a tag at or behind the virtual time = none
            self._next_tag = {f: t for f, t in self._next_tag.items() if t > self._vtime}
        self._queue.append(request)

    @staticmethod
    def _head(pool: list[DecodeRequest]) -> DecodeRequest:
        """The request with the lowest tag (min keeps the oldest of equal tags)."""
        return min(pool, key=lambda r: r.tag)

    def _gather(self) -> None:
        """Wait (bounded) for more requests to join, unless the batch is full already."""
        if self.gather_s <= 0 or self.max_batch == 1:
            return
        head = self._head(self._pool())
        if self.max_window is not None and head.window > self.max_window:
            return  # it runs alone anyway
        deadline = time.perf_counter() + self.gather_s
        waited = False
        while len(self._queue) < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            waited = True
            self._cond.wait(left)
        self.stats.gather_waits += waited

    def _take(self) -> list[DecodeRequest]:
        pool = self._pool()
        head = self._head(pool)
        size = self.max_batch
        if self.max_window is not None and head.window > self.max_window:
            size = 1
        mates = sorted((r for r in pool if r is not head and head.fits(r)), key=lambda r: r.tag)
        flows = {head.flow}
        batch = [head]
        for request in mates:  # one per flow first, lowest tags first
            if len(batch) < size and request.flow not in flows:
                flows.add(request.flow)
                batch.append(request)
        for request in mates:  # then fill up with the rest
            if len(batch) < size and request not in batch:
                batch.append(request)
        taken = set(map(id, batch))
        self._queue = [r for r in self._queue if id(r) not in taken]
        self._vtime = max(self._vtime, head.tag)
        return batch

    def _execute(self, batch: list[DecodeRequest]) -> None:
        try:
            self._run_batch(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for request in batch:
                request.error = exc
        with self._cond:
            for request in batch:
                request.batch_size = len(batch)
                request.done = True
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
