"""Importing Keras for a command: quietly, and without modules the command line never uses."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Sequence

# Keras imports these, where installed, for notebook display and image galleries that the
# command line never uses; they cost seconds of every command's start-up.
_UNUSED_AT_KERAS_IMPORT = ("IPython", "matplotlib.pyplot")


def start_keras() -> None:
    """Import Keras, hiding the backend's native start-up log lines (CUDA probing, CPU features).
    Commands call it before they run; one that may not need Keras calls it itself where it does.

    Those lines bypass Python logging; ``TF_CPP_MIN_LOG_LEVEL=0`` shows them. TensorFlow probes
    for GPUs only when devices are first listed, so that happens here too, while hidden.
    """
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        sys.stderr.flush()
        saved = os.dup(2)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    try:
        with _modules_hidden(_UNUSED_AT_KERAS_IMPORT):
            import keras

        if quiet and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()
    finally:
        if quiet:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _modules_hidden(names: Sequence[str]):
    """Imports of ``names`` (not yet imported) fail inside the block and work again after it."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # an import of it raises ImportError, which Keras expects
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
