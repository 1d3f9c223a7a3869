"""Writing the best checkpoint without stalling training.

The weights are copied to host memory on the training thread (:func:`~vitkit.models.modelfile.snapshot_model`);
the H5 file is then written, atomically, in a background thread while the next epoch runs. One
write at a time: a newer checkpoint waits for the one in flight. An error of the writer is
raised in the training thread at the next :meth:`CheckpointWriter.write` or
:meth:`CheckpointWriter.wait`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from vitkit.errors import OutputError, VitkitError
from vitkit.models.modelfile import ModelSnapshot, write_snapshot


class CheckpointWriter:
    """Writes model snapshots to their files, one at a time, in a background thread.

    ``background=False`` writes in the calling thread instead (the reference the background
    writes are measured and checked against).
    """

    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._failure: tuple[Path, BaseException] | None = None

    def write(self, snapshot: ModelSnapshot, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``snapshot`` to ``path`` (replacing it) once the write before it is on disk.

        Raises:
            OutputError: the write before it failed.
        """
        self.wait()
        if not self.background:
            write_snapshot(snapshot, path, overwrite=True, extra=extra)
            return
        # Not a daemon: should the process end without waiting, the file is still completed.
        self._thread = threading.Thread(target=self._write, args=(snapshot, path, extra),
                                        name="vitkit-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Return once no write is in flight.

        Raises:
            OutputError: the last write failed (the file it was to replace is left as it was).
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failure is not None:
            path, error = self._failure
            self._failure = None
            if isinstance(error, VitkitError):
                raise error
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OutputError(f"the checkpoint {path} was not written ({type(error).__name__}: {detail}); "
                              f"the previous one is kept") from error

    def _write(self, snapshot: ModelSnapshot, path: Path, extra: dict[str, Any] | None) -> None:
        try:
            write_snapshot(snapshot, path, overwrite=True, extra=extra)
        except BaseException as error:  # handed to the training thread, which reports it
            self._failure = (path, error)
