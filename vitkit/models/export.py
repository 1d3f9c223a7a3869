"""Export a classifier for serving outside vitkit: a ``.keras`` file, a TensorFlow SavedModel, or ONNX.

Every export takes uint8 images ``(batch, height, width, 3)`` at the model's image size and
returns class probabilities in ``model.class_names`` order; scaling happens inside, exactly as
in vitkit. Outputs are written atomically and never replace an existing file or folder without
``overwrite``.

- ``keras``: ``keras.saving.load_model(path)`` after ``import vitkit`` (its layers are vitkit's).
- ``savedmodel``: ``tf.saved_model.load(path).serve(images)``; needs only TensorFlow. Written on
  the TensorFlow or JAX backend.
- ``onnx``: one input ``images`` (uint8), one output (probabilities), for onnxruntime and
  friends. Needs the TensorFlow backend and the ``tf2onnx`` package.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from vitkit.errors import ConfigError
from vitkit.fileio import atomic_output, check_writable
from vitkit.models.classifier import ImageClassifier

EXPORT_FORMATS = ("keras", "savedmodel", "onnx")
ONNX_OPSET = 17


def export_model(model: ImageClassifier, out: str | os.PathLike, format: str = "keras", overwrite: bool = False) -> Path:
    """Write ``model`` in ``format`` to ``out`` (a file, or a folder for ``savedmodel``).

    Args:
        model: a loaded classifier (:func:`vitkit.load_model` reads any supported file).
        out: destination; ``.keras`` for ``keras``, ``.onnx`` for ``onnx``, a folder for ``savedmodel``.
        format: ``keras``, ``savedmodel`` or ``onnx``.
        overwrite: replace an existing destination.

    Raises:
        ConfigError: unknown format, wrong suffix, or a format the current backend cannot write.

    Example:
        >>> export_model(vitkit.load_model("models/products.weights.h5"), "serve/products", "savedmodel")
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    out = Path(out)
    suffix = {"keras": ".keras", "onnx": ".onnx"}.get(format)
    if suffix and out.suffix != suffix:
        raise ConfigError(f"a {format} export is a file ending in {suffix}; got {out}")
    if format == "keras":
        with atomic_output(out, overwrite=overwrite, suffix=".keras") as temporary:
            model.save(temporary)
    elif format == "savedmodel":
        _export_savedmodel(model, out, overwrite)
    else:
        _export_onnx(model, out, overwrite)
    return out


def _backend_check(format: str, allowed: tuple[str, ...]) -> None:
    backend = keras.backend.backend()
    if backend not in allowed:
        raise ConfigError(
            f"{format} export needs the {' or '.join(allowed)} backend, this process runs {backend}; "
            f"run it with --backend {allowed[0]} (KERAS_BACKEND={allowed[0]})"
        )


def _export_savedmodel(model: ImageClassifier, out: Path, overwrite: bool) -> None:
    _backend_check("savedmodel", ("tensorflow", "jax"))
    check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.export(str(staging / "model"), format="tf_saved_model", verbose=False)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging / "model", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_onnx(model: ImageClassifier, out: Path, overwrite: bool) -> None:
    _backend_check("onnx", ("tensorflow",))
    try:
        import tf2onnx
    except ImportError:
        raise ConfigError("onnx export needs the tf2onnx package: pip install tf2onnx (onnxruntime to run it)") from None
    import tensorflow as tf

    height, width = model.spec.image_size
    signature = [tf.TensorSpec((None, height, width, 3), tf.uint8, name="images")]
    serve = tf.function(lambda images: model(images, training=False), input_signature=signature)
    with atomic_output(out, overwrite=overwrite, suffix=".onnx") as temporary:
        tf2onnx.convert.from_function(
            serve, input_signature=signature, opset=ONNX_OPSET, output_path=str(temporary),
            custom_op_handlers={"Erfc": (_erfc_as_erf, [])},
        )


def _erfc_as_erf(ctx, node, name, args):
    """ONNX has Erf but no Erfc (TensorFlow's exact GELU): ``erfc(x) = 1 - erf(x)``."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    difference = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"))
    ctx.replace_inputs(difference, [one.output[0], node.output[0]])
    return node
