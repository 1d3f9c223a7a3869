"""Manifests from a folder of photos with one sub-folder per class: ``vitkit manifest build``.

Also the folder scan that loading a photo folder directly uses, and the seeded, per-class
train/val/test split that training uses to hold out validation images.
"""

from __future__ import annotations

import csv
import os
import random
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from vitkit.data.images import IMAGE_SUFFIXES, is_image_file
from vitkit.data.manifestcsv import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, SPLITS
from vitkit.errors import ManifestError
from vitkit.fileio import atomic_output, check_writable


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), following links without looping.

    Other files (not hidden) are left out with a warning that counts them by suffix, so a
    folder of, say, HEIC photos does not silently come out empty.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"photo folder {folder} not found")
    found = []
    ignored: Counter = Counter()
    visited = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            if is_image_file(Path(name)):
                found.append(Path(current) / name)
            else:
                ignored[Path(name).suffix.lower() or "(no suffix)"] += 1
    if ignored:
        kinds = ", ".join(f"{count} {suffix}" for suffix, count in sorted(ignored.items()))
        warnings.warn(
            f"{folder}: ignored {sum(ignored.values())} file(s) that are not images vitkit reads ({kinds}); "
            f"supported: {', '.join(IMAGE_SUFFIXES)}",
            stacklevel=2,
        )
    return found


def folder_labels(folder: Path, images: Sequence[Path]) -> list[str] | None:
    """Class of each image from its first sub-folder under ``folder``; None unless every image has one."""
    parts = [image.relative_to(folder).parts for image in images]
    if not parts or any(len(p) < 2 for p in parts):
        return None
    return [p[0] for p in parts]


def manifest_rows_for_folder(photo_dir: Path, manifest_dir: Path) -> list[dict[str, str]]:
    """Rows for every image of a one-sub-folder-per-class tree (nested folders allowed)."""
    rows = []
    base = os.path.relpath(photo_dir.resolve(), manifest_dir.resolve())
    for image in find_images(photo_dir):
        relative = image.relative_to(photo_dir)
        if len(relative.parts) < 2:
            warnings.warn(f"{image}: not inside a class folder; skipped", stacklevel=2)
            continue
        rows.append({
            "base_path": Path(base).as_posix(),
            "type_dir": relative.parent.as_posix(),
            "file_name": relative.name,
            "label": relative.parts[0],
        })
    return rows


def stratified_split(labels: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Assign ``train``/``val``/``test`` per class with a seeded shuffle; train keeps at least one."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ManifestError(f"val and test fractions must be in [0, 1) and sum below 1, got {val_fraction}, {test_fraction}")
    splits = ["train"] * len(labels)
    rng = random.Random(seed)
    for name in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == name]
        rng.shuffle(members)
        count = len(members)
        n_test = round(count * test_fraction)
        n_val = round(count * val_fraction)
        while count - n_test - n_val < 1 and (n_test or n_val):
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        for i in members[:n_test]:
            splits[i] = "test"
        for i in members[n_test:n_test + n_val]:
            splits[i] = "val"
    return splits


def build_manifests(
    photo_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Counter]:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` for a folder with one sub-folder per class.

    Returns:
        ``{split: Counter(class -> images)}``.
    """
    photo_dir, out_dir = Path(photo_dir), Path(out_dir)
    targets = {split: out_dir / f"{split}.csv" for split in SPLITS}
    for target in targets.values():
        check_writable(target, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = manifest_rows_for_folder(photo_dir, out_dir)
    if not rows:
        raise ManifestError(
            f"{photo_dir}: no images found in class sub-folders (expected PHOTO_DIR/<class>/<image>, "
            f"image suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    counts = Counter(row["label"] for row in rows)
    if len(counts) < 2:
        raise ManifestError(f"{photo_dir}: found only the class {list(counts)}; a classifier needs two or more class folders")
    for name, count in sorted(counts.items()):
        if count < 3:
            warnings.warn(f"class {name!r} has {count} image(s): too few for val and test splits", stacklevel=2)
    splits = stratified_split([row["label"] for row in rows], val_fraction, test_fraction, seed)
    summary = {split: Counter() for split in SPLITS}
    for split, target in targets.items():
        selected = [row for row, assigned in zip(rows, splits) if assigned == split]
        write_manifest(target, selected, overwrite=overwrite)
        summary[split].update(row["label"] for row in selected)
    return summary


def write_manifest(path: Path, rows: Iterable[dict[str, str]], overwrite: bool = False) -> Path:
    """Write manifest rows (dicts with the manifest columns) atomically as UTF-8 CSV."""
    rows = list(rows)
    columns = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(c in row for row in rows)]
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, columns)
            writer.writeheader()
            writer.writerows(rows)
    return path
