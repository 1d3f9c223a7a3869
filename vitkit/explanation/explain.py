"""Attention maps: where a ViT classifier looks, computed in the step that predicts.

Methods (``method=``):

``integrated`` (the default)
    Integrated gradients (Sundararajan et al. 2017) of the explained class's score (logit): the
    predicted class, or the one asked for. The path starts at a flat image of the photo's mean
    colour (no shape, and no credit for being bright, as a black start gives). The gradients
    with respect to the pixels are averaged over 8 points of the straight path to the photo (the
    midpoint rule), multiplied by the photo minus that start and summed over the channels; the
    map is the positive part (the evidence for the class) at pixel resolution, blurred with a
    Gaussian of half a patch (sigma ``patch_size / 2`` pixels, the kernel renormalised at the
    edges). Eight forward and backward passes per batch. Its maps point at the product more often
    than the attention methods' on the generated hard product photos, where the later layers'
    attention is nearly uniform, and on the bundled sample (``bench/README.md``).
``rollout``
    Attention rollout (Abnar & Zuidema 2020). Per layer the heads are fused (``mean``, ``max`` or
    ``min``), optionally the lowest ``discard_ratio`` of the fused weights are set to zero (never
    the class token's attention to itself), the identity is added for the residual path, the rows
    are renormalised, and the layers are multiplied, last to first. The map is the class token's
    row over the patch tokens.
``gradient``
    Class-specific relevance (Chefer et al. 2021): ``R = I``; for every layer
    ``R += mean_heads(max(dS/dA * A, 0)) @ R``, where ``S`` is the score (logit) of the explained
    class: the predicted one, or the one asked for. The map is ``R``'s class-token row.
``layer``
    The class token's attention over the patches in one layer, heads fused (layer 0, the first,
    by default; ``-1`` is the last).

The attention methods' maps cover the patch tokens only: register tokens (DINOv2 with
registers), the distillation token (DeiT) and the class token are left out, and the report says
so; a distilled model's maps read the class token's row (its prediction also averages the
distillation head's). A model that pools by the mean of its patch tokens (timm's
``global_pool="avg"``) has no class token to read: its maps read the mean of the patch tokens'
rows instead of the class token's row (see :mod:`vitkit.explanation.rollout`).

Every map is divided by its maximum (values in [0, 1]). Integrated gradients give one value per
pixel of the image the model sees; the attention methods one per patch, resized bilinearly to
the image (``Explanation.native_maps`` holds either, ``Explanation.maps`` the image-sized maps).
The maths runs inside the compiled prediction step on a batch: with the attention methods
explaining a set costs little more than predicting it, integrated gradients about eight times
as much.

Example:
    >>> result = vitkit.explain("models/products.weights.h5", "photos/test")
    >>> result.table()[["image", "predicted", "confidence"]]
    >>> result.maps([0]).shape          # (1, height, width), values in [0, 1]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitkit.explanation.attention import check_options, explain_images
from vitkit.explanation.outputs import (
    OUTPUT_FILES,
    figure_paths,
    focus_position,
    save_maps_file,
    write_attention_json,
    write_figures,
)
from vitkit.explanation.result import Explanation
from vitkit.fileio import check_writable
from vitkit.models.classifier import ImageClassifier
from vitkit.prediction import as_model, images_for


def explain(
    model: ImageClassifier | str | os.PathLike,
    data: Any,
    *,
    method: str = "integrated",
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    layer: int = 0,
    class_name: str | None = None,
    out: str | os.PathLike | None = None,
    pdf: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    save_maps: str | os.PathLike | None = None,
    export_attention: str | os.PathLike | None = None,
    focus: str | int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    preprocess: str | None = None,
    num_heads: int | None = None,
    **load_options: Any,
) -> Explanation:
    """Predict and draw maps of where the model looks, in one compiled step per batch.

    Args:
        model: a classifier or a model file.
        data: manifest, folder, image files, or arrays (see :func:`vitkit.data.imageset.load_images`).
        method: ``integrated`` (integrated gradients, class-specific; the default), ``rollout``
            (class-agnostic attention rollout), ``gradient`` (class-specific relevance, Chefer et
            al. 2021) or ``layer`` (one layer's class-token attention).
        head_fusion: ``mean``, ``max`` or ``min`` over the heads (rollout and layer maps).
        discard_ratio: share of the lowest fused weights per layer dropped by rollout (0 to <1).
        layer: the layer of ``method="layer"``; negative counts from the last.
        class_name: with ``method="integrated"`` or ``"gradient"``, explain this class instead of
            the predicted one.
        out: folder for the figures: ``figures/NNNN_<name>.png`` per image (original | overlay |
            masked), ``grid.png`` (16 overlays spread over the set), ``layers.png`` and ``heads.png`` (the
            per-layer strip and per-head maps of the ``focus`` image), ``explanations.csv`` and,
            when some images could not be read, ``skipped.csv``.
        pdf: a PDF with one page per image (original | overlay | masked).
        report: a self-contained HTML report (see :mod:`vitkit.explanation.report`).
        save_maps: an ``.npz`` with every map at image resolution, keyed by image: ``(height,
            width)`` float32 arrays, per pixel for ``integrated``, resized from the patch grid for
            the other methods.
        export_attention: a JSON file with the ``focus`` image's attention in BertViz's layout
            (every layer and head: about 50 MB for ViT-B/16 at 224 px).
        focus: the image for ``layers.png``, ``heads.png`` and ``export_attention``: a position
            (0 = first, the default) or a file name (the end of the path is enough).
        batch_size: images per step.
        overwrite: replace existing output files.
        progress: show progress bars.
        preprocess, num_heads: for a weights file of another tool (see :func:`vitkit.load_model`),
            whose class names come from ``classes``.
        **load_options: ``cache_dir``, ``on_bad_image``, ``label_from``, ``classes``, ``root``.

    Returns:
        An :class:`Explanation` with the predictions and maps.

    Example:
        >>> result = vitkit.explain("models/products.weights.h5", "photos/test", method="gradient",
        ...                         out="explained/", report="explained/report.html")
        >>> result.maps([0]).shape           # (1, height, width), values in [0, 1]
    """
    model_source = None if isinstance(model, ImageClassifier) else model
    model = as_model(model, load_options.get("classes"), preprocess=preprocess, num_heads=num_heads)
    check_options(model, method, head_fusion, discard_ratio, layer, class_name, batch_size)
    for target in (pdf, report, save_maps, export_attention):
        if target is not None:
            check_writable(target, overwrite)
    if out is not None:
        for name in OUTPUT_FILES:
            check_writable(Path(out) / name, overwrite)
    images = images_for(model, data, progress=progress, **load_options)
    focus_index = focus_position(images.names, focus)
    if out is not None:
        for path in figure_paths(out, images.names):
            check_writable(path, overwrite)
    result = explain_images(model, images, method=method, head_fusion=head_fusion,
                            discard_ratio=discard_ratio, layer=layer, class_name=class_name,
                            batch_size=batch_size, progress=progress)
    if not len(result):
        return result
    if out is not None:
        write_figures(result, model, out, focus_index, progress)
    if pdf is not None:
        from vitkit.explanation.figures import image_figures, save_pdf

        save_pdf(image_figures(result, range(len(result))), pdf, overwrite=True)
    if report is not None:
        from vitkit.explanation.report import write_report

        write_report(result, report, model, model_source=model_source, overwrite=True, progress=progress)
    if save_maps is not None:
        save_maps_file(result, save_maps, overwrite=True)
    if export_attention is not None:
        write_attention_json(model, images, export_attention, focus_index, overwrite=True)
    return result
