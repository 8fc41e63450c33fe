"""A second thread for the training step's work that is off its critical path.

Why: a step's chain of dependencies runs forward through the layers and back, but the weight
gradients (one product per layer) and Adam's update are needed only by the next step. On a CPU
with a core to spare they run on this thread while the training thread goes on down the chain and
gathers the next batch; torch releases the GIL inside an op, so the two threads compute at once.
Each op runs single-threaded as it would on the training thread, on the same inputs, so the
results are bit for bit those of one thread whatever the scheduling: nothing depends on which
thread ran first, only :meth:`wait` orders the two. A waiting thread sleeps (no spinning), so a
busy machine slows a step down to about one core's speed, not below.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


class StepWorker:
    """Runs submitted calls in order on one daemon thread; :meth:`wait` blocks until all are done."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inclust-step-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._error is None:
                    job()
            except BaseException as exc:  # handed to the training thread at its next wait
                self._error = exc
            self._done.put(None)

    def submit(self, job: Callable[[], None]) -> None:
        self._pending += 1
        self._jobs.put(job)

    def wait(self) -> None:
        """Block until every submitted call has run; re-raise the first error one of them raised."""
        while self._pending:
            self._done.get()
            self._pending -= 1
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Finish the submitted calls (re-raising an error of theirs) and stop the thread."""
        try:
            self.wait()
        finally:
            self._jobs.put(None)
            self._thread.join()


class InlineWorker:
    """The same calls run at once on the calling thread (one core, or a test's exact reference)."""

    def submit(self, job: Callable[[], None]) -> None:
        job()

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass
