"""The files of an explanation: figures per image, the maps as ``.npz``, attention as BertViz JSON."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vitkit.data.imageset import ImageSet
from vitkit.errors import ConfigError
from vitkit.fileio import atomic_output, safe_file_stem, write_text_atomic
from vitkit.progress import Progress

if TYPE_CHECKING:
    from vitkit.explanation.result import Explanation
    from vitkit.models.classifier import ImageClassifier

OUTPUT_FILES = ("explanations.csv", "grid.png", "layers.png", "heads.png", "skipped.csv")
FIGURE_DIR = "figures"
GRID_IMAGES = 16


def figure_paths(out: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """``out/figures/NNNN_<stem>.png`` per image: numbered in input order, so names never collide."""
    width = max(4, len(str(len(names))))
    return [Path(out) / FIGURE_DIR / f"{i:0{width}d}_{safe_file_stem(Path(name).stem)}.png" for i, name in enumerate(names)]


def focus_position(names: Sequence[str], focus: str | int | None) -> int:
    """The position of the ``focus`` image: an index, or a file name matching the end of one path."""
    if focus is None:
        return 0
    if isinstance(focus, int) or str(focus).lstrip("-").isdigit():
        index = int(focus)
        if not -len(names) <= index < len(names):
            raise ConfigError(f"focus image {index} does not exist: there are {len(names)} images")
        return index % len(names)
    wanted = Path(str(focus)).as_posix()
    found = [i for i, name in enumerate(names) if Path(name).as_posix() == wanted or Path(name).as_posix().endswith("/" + wanted)]
    if len(found) != 1:
        problem = "matches no image" if not found else f"matches {len(found)} images; give more of the path"
        raise ConfigError(f"focus image {focus!r} {problem}")
    return found[0]


def write_figures(result: "Explanation", model: "ImageClassifier", out: str | os.PathLike,
                  focus_index: int = 0, progress: bool = True) -> None:
    """The figures and table of :func:`explain`'s ``out`` folder (existing files are replaced)."""
    from vitkit.explanation.figures import grid_figure, head_figure, image_figure, layer_figure
    from vitkit.figures import save_figure, spread_indices
    from vitkit.data.imageset import write_skipped
    from vitkit.prediction import write_table

    out = Path(out)
    with Progress(len(result), "drawing", enabled=None if progress else False) as bar:
        for index, path in enumerate(figure_paths(out, result.names)):
            save_figure(image_figure(result, index), path)
            bar.update()
    save_figure(grid_figure(result, spread_indices(len(result), GRID_IMAGES)), out / "grid.png")
    save_figure(layer_figure(result, focus_index), out / "layers.png")
    save_figure(head_figure(model, result, focus_index), out / "heads.png")
    write_table(result.table(), out / "explanations.csv", overwrite=True)
    if result.images.skipped:
        write_skipped(result.images.skipped, out / "skipped.csv", overwrite=True)


def save_maps_file(explanation: "Explanation", path: str | os.PathLike, overwrite: bool = False,
                   chunk: int = 64) -> Path:
    """Write every map (float32 in [0, 1], at the size the model sees images) to an ``.npz``, keyed by image.

    Each array is ``(height, width)`` (:meth:`~vitkit.explanation.result.Explanation.maps`): the
    map itself for a method with maps per pixel (``integrated``), the patch grid resized
    bilinearly for the others.

    Keys are the image names (file paths as read); a name seen twice gets ``#2``, ``#3``...
    Maps are written a chunk at a time, so memory does not grow with the number of images.

    Example:
        >>> maps = np.load("maps.npz")
        >>> maps["photos/mug/mug_01.jpg"].shape    # (height, width)
    """
    keys = map_keys(explanation.names)
    with atomic_output(path, overwrite=overwrite, suffix=".npz") as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for start in range(0, len(explanation), chunk):
                indices = np.arange(start, min(start + chunk, len(explanation)))
                for index, image_map in zip(indices, explanation.maps(indices)):
                    with archive.open(keys[index] + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.ascontiguousarray(image_map), allow_pickle=False)
    return Path(path)


def token_names(grid: tuple[int, int], registers: int = 0, distillation: bool = False) -> list[str]:
    """``["CLS", "DIST", "REG_0", ..., "patch_0_0", "patch_0_1", ...]``: the tokens in the order the
    backbone uses (``DIST``, the distillation token, only with ``distillation``)."""
    return (["CLS"] + (["DIST"] if distillation else []) + [f"REG_{i}" for i in range(registers)]
            + [f"patch_{row}_{col}" for row in range(grid[0]) for col in range(grid[1])])


def bertviz_attention(attention: np.ndarray, grid: tuple[int, int], decimals: int = 5,
                      registers: int = 0, distillation: bool = False) -> dict[str, Any]:
    """One image's attention ``(layers, heads, tokens, tokens)`` in the layout BertViz's views read.

    The result is the parameter object of BertViz's ``head_view`` / ``model_view`` scripts
    (``attention[0]["attn"]`` is layers x heads x tokens x tokens, ``left_text`` / ``right_text``
    the token names), so it also feeds the Python API::

        data = json.load(open("attention.json"))
        head_view([torch.tensor(layer)[None] for layer in data["attention"][0]["attn"]], data["tokens"])
    """
    attention = np.asarray(attention, dtype=np.float32)
    layers, heads, tokens = attention.shape[0], attention.shape[1], attention.shape[-1]
    names = token_names(grid, registers, distillation)
    if tokens != len(names):
        raise ConfigError(f"attention has {tokens} tokens, a {grid[0]}x{grid[1]} grid with {registers} registers "
                          f"{'and a distillation token ' if distillation else ''}has {len(names)}")
    return {
        "attention": [{"name": None, "attn": np.round(attention, decimals).tolist(),
                       "left_text": names, "right_text": names}],
        "default_filter": "0",
        "display_mode": "light",
        "layer": 0,
        "heads": None,
        "include_layers": list(range(layers)),
        "include_heads": list(range(heads)),
        "total_heads": heads,
        "tokens": names,
    }


def write_attention_json(model: "ImageClassifier", images: ImageSet, path: str | os.PathLike,
                         index: int = 0, overwrite: bool = False) -> Path:
    """Write image ``index``'s per-layer, per-head attention as BertViz JSON (see :func:`bertviz_attention`).

    Besides BertViz's keys the file names the image, the prediction, the patch grid and size.
    """
    from vitkit.explanation.attention import attention_weights

    probabilities, attention = attention_weights(model, images.read(np.array([index])))
    grid = model.backbone.grid_shape(model.spec.image_size)
    best = int(probabilities[0].argmax())
    config = model.backbone.config
    data = bertviz_attention(attention[0], grid, registers=config.register_tokens,
                             distillation=config.distillation_token)
    data.update({
        "image": images.names[index],
        "predicted": model.class_names[best],
        "confidence": round(float(probabilities[0, best]), 6),
        "grid": list(grid),
        "patch_size": model.backbone.config.patch_size,
    })
    return write_text_atomic(path, json.dumps(data), overwrite=overwrite)


def map_keys(names: Sequence[str]) -> list[str]:
    """Unique ``.npz`` keys for image names: the name itself, ``name#2`` for a repeat."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


