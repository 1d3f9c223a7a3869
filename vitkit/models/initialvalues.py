"""Building a model whose weights are read from a file next, without drawing initial values.

Each Keras initializer runs as a backend operation; on JAX every new weight shape compiles its
own small program first. For a ViT-B/16 that is most of the time building the model takes
(3.4 s of 3.6 s on a CPU), all of it for values the file replaces at once. Inside
:func:`initial_values_skipped` a weight made by a Keras initializer starts as zeros instead
(NumPy's, which cost no computation). Other initial values, such as a random seed generator's
state, are made as usual. :func:`vitkit.load_model` refuses a file that leaves any layer's
weights unread, so no zero is ever mistaken for a trained weight.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras
import numpy as np


_METHOD = "_initialize_with_initializer"


@contextlib.contextmanager
def initial_values_skipped() -> Iterator[None]:
    """Weights made by Keras initializers inside the block start as zeros (see the module).

    Where this Keras version builds variables differently, the block changes nothing.
    """
    variable_class = keras.Variable  # the backend's own class
    inherited = getattr(variable_class, _METHOD, None)
    if inherited is None:
        yield
        return
    own = variable_class.__dict__.get(_METHOD)

    def zeros_for_initializers(variable, initializer):
        if isinstance(initializer, keras.initializers.Initializer):
            variable._initialize(np.zeros(variable.shape, dtype=variable.dtype))
        else:
            inherited(variable, initializer)

    setattr(variable_class, _METHOD, zeros_for_initializers)
    try:
        yield
    finally:
        if own is None:
            delattr(variable_class, _METHOD)
        else:
            setattr(variable_class, _METHOD, own)
