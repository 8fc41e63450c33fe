"""A second thread for the training step's work that is off its critical path.

Why: a step's chain of dependencies runs forward through the layers and back, but the weight
gradients (one product per layer), the loss values and the next batch are not on its path, and the
classifier/KL branch of the loss is a side branch that joins it only at the latent. On a CPU with a core to spare they run on this thread while
the training thread goes on down the chain; torch releases the GIL inside an op, so the two threads
compute at once. Each op runs single-threaded as it would on the training thread, on the same
inputs, so the results are bit for bit those of one thread whatever the scheduling: only the
waits order the two. A waiting thread sleeps (no spinning), so a busy machine slows a step down to
about one core's speed, not below.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Pending:
    """The result of a call handed to a worker: :meth:`get` waits for it."""

    def __init__(self):
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._done.set()

    def get(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


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
                job()
            except BaseException as exc:  # handed to the training thread at its next wait
                if self._error is None:
                    self._error = exc
            self._done.put(None)

    def submit(self, job: Callable[[], None]) -> None:
        self._pending += 1
        self._jobs.put(job)

    def call(self, fn: Callable[[], Any]) -> Pending:
        """Run ``fn`` in turn; its result (or error) through the returned :class:`Pending`."""
        pending = Pending()
        self.submit(lambda: pending._run(fn))
        return pending

    def wait(self) -> None:
        """Block until every submitted call has run; re-raise the first error one of them raised."""
        while self._pending:
            self._done.get()
            self._pending -= 1
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Stop the thread once the submitted calls have run. Their errors reached the training
        thread at its waits; one raised after the last wait does not mask the exception (a Ctrl-C,
        say) that ends a run."""
        try:
            self.wait()
        except BaseException:
            pass
        finally:
            self._jobs.put(None)
            self._thread.join()


class InlineWorker:
    """The same calls run at once on the calling thread (one core, or a test's exact reference)."""

    def submit(self, job: Callable[[], None]) -> None:
        job()

    def call(self, fn: Callable[[], Any]) -> Pending:
        pending = Pending()
        pending._run(fn)
        return pending

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass
