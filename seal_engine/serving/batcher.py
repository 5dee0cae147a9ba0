"""Continuous batching: one :class:`~seal_engine.serving.decoder.Decoder` driven by a background thread.

Requests are queued from any thread and join the running batch before the next decoding
step (up to ``max_rows`` rows; the rest wait in the queue), so a request that arrives
mid-decode starts at once instead of waiting for the batch in flight to finish.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence

from seal_engine.core.model import ModelBundle
from seal_engine.serving.decoder import Decoder, DecodeRequest

log = logging.getLogger(__name__)


class ContinuousBatcher:
    def __init__(self, bundle: ModelBundle, max_rows: int = 32) -> None:
        self.decoder = Decoder(bundle)
        self.max_rows = max(1, max_rows)
        self.steps = 0  # decoding steps run
        self._pending: deque[DecodeRequest] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, requests: Sequence[DecodeRequest]) -> None:
        """Queue rows (thread-safe); their sinks hear from the decoding thread."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the decoder is shut down")
            self._pending.extend(requests)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="seal-decoder", daemon=True)
                self._thread.start()
            self._cv.notify()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the loop; rows in flight and queued requests fail."""
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        decoder = self.decoder
        while True:
            with self._cv:
                while not (self._closed or self._pending or decoder.rows):
                    self._cv.wait()
                if self._closed:
                    break
                room = min(self.max_rows - len(decoder.rows), len(self._pending))
                new = [self._pending.popleft() for _ in range(room)]
            for r in new:
                if r.sink.cancelled:
                    r.sink.finish("cancelled")
            self._admit([r for r in new if not r.sink.cancelled])
            if decoder.rows:
                try:
                    decoder.step()
                    self.steps += 1
                except Exception as e:
                    log.exception("decoding step failed; failing the %d rows in flight", len(decoder.rows))
                    decoder.fail_all(e)
        error = RuntimeError("server shutting down")
        decoder.fail_all(error)
        with self._cv:
            pending, self._pending = list(self._pending), deque()
        for r in pending:
            r.sink.fail(error)

    def _admit(self, new: list[DecodeRequest]) -> None:
        if not new:
            return
        try:
            self.decoder.add(new)
        except Exception as e:
            if len(new) == 1:
                new[0].sink.fail(e)
                return
            # One bad request (say, an adapter that does not fit) must not fail its neighbours.
            log.warning("prefill of %d rows failed; admitting them one by one", len(new), exc_info=True)
            for r in new:
                try:
                    self.decoder.add([r])
                except Exception as e1:
                    r.sink.fail(e1)
