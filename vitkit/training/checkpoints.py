"""Writing an epoch's files without stalling training.

The variables are copied where they live on the training thread (one quick copy per variable:
:func:`~vitkit.models.modelfile.snapshot_model`); the files are then written, each atomically,
in a background thread while training goes on. Writes submitted while others are in flight wait
as the pending group, in which a newer write of a file replaces an older one: an epoch never
waits for the disk, and a slow disk writes the newest copies rather than every one. An error of
the writer is raised in the training thread at the next :meth:`CheckpointWriter.submit` or
:meth:`CheckpointWriter.wait`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from vitkit.errors import OutputError, VitkitError

Write = tuple[Path, Callable[[], Any]]
"""A file (or folder) and the call that writes it."""


class CheckpointWriter:
    """Runs writes in order in one background thread, the newest write of each file winning.

    ``background=False`` writes in the calling thread instead (the reference the background
    writes are measured and checked against).
    """

    def __init__(self, background: bool = True):
        self.background = background
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending: dict[Path, Callable[[], Any]] = {}
        self._failure: tuple[Path, BaseException] | None = None

    @property
    def busy(self) -> bool:
        """Whether writes are in flight (what is submitted now waits for them)."""
        with self._lock:
            return self._thread is not None

    def submit(self, writes: Sequence[Write]) -> None:
        """Write after the writes in flight, in order; a failed write drops those after it.

        Raises:
            OutputError: a write before them failed.
        """
        self._raise_failure()
        if not self.background:
            self._run(dict(writes))
            self._raise_failure()
            return
        with self._lock:
            if self._thread is not None:  # the thread takes them when it is done
                self._pending.update(writes)
                return
            # Not a daemon: should the process end without waiting, the files are still completed.
            self._thread = threading.Thread(target=self._drain, args=(dict(writes),), name="vitkit-checkpoint",
                                            daemon=False)
            self._thread.start()

    def wait(self) -> None:
        """Return once no write is in flight or pending.

        Raises:
            OutputError: a write failed (the file it was to replace is left as it was).
        """
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
        self._raise_failure()

    def _drain(self, writes: dict[Path, Callable[[], Any]]) -> None:
        while writes:
            self._run(writes)
            with self._lock:  # a failure drops the pending writes
                writes, self._pending = (self._pending if self._failure is None else {}), {}
                if not writes:
                    self._thread = None

    def _run(self, writes: dict[Path, Callable[[], Any]]) -> None:
        for path, write in writes.items():
            try:
                write()
            except BaseException as error:  # handed to the training thread, which reports it
                self._failure = (path, error)
                return

    def _raise_failure(self) -> None:
        if self._failure is None:
            return
        path, error = self._failure
        self._failure = None
        if isinstance(error, VitkitError):
            raise error
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OutputError(f"the checkpoint {path} was not written ({type(error).__name__}: {detail}); "
                          f"the previous one is kept") from error
