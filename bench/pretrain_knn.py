"""How well pre-trained backbones separate the classes before any fine-tuning: k-NN on their features.

    python bench/pretrain_knn.py --data MANIFESTS_DIR NAME=FILE.backbone.weights.h5 [NAME=FILE ...] [--k 20]

For each backbone file (and a backbone of random weights of the first file's architecture, for
reference): the pooled features (class token after the final norm) of the manifests'
``train.csv`` and ``test.csv`` photos at the file's image size, L2-normalised, and the test
accuracy of a k-nearest-neighbour vote (cosine similarity, each neighbour weighted by
``exp(similarity / 0.07)``, as DINO evaluates). The labels are read only here: pre-training never
saw them. Writes bench/results/pretrain_knn.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save_results, table  # noqa: E402


def features(model, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    import keras

    parts = []
    for start in range(0, len(pixels), batch):
        images = keras.ops.convert_to_tensor(pixels[start:start + batch])
        parts.append(keras.ops.convert_to_numpy(model._features(model.augment_pixels(images), training=False)[0]))
    out = np.concatenate(parts)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def knn_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                 k: int, classes: int) -> float:
    similarity = test @ train.T
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / 0.07)
    votes = np.zeros((len(test), classes))
    np.add.at(votes, (np.arange(len(test))[:, None].repeat(k, axis=1), train_labels[nearest]), weights)
    return float((votes.argmax(1) == test_labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.csv and test.csv")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("backbones", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()

    from vitkit.data.imageset import load_images
    from vitkit.models.backbonefile import read_backbone_file
    from vitkit.models.classifier import build_model

    files = dict(item.split("=", 1) for item in args.backbones)
    first = read_backbone_file(next(iter(files.values())))
    size = first.image_size
    sets = {split: load_images(str(args.data / f"{split}.csv"), size, progress=False) for split in ("train", "test")}
    classes = sorted(set(sets["train"].labels))
    labels = {split: sets[split].label_indices(classes) for split in sets}
    pixels = {split: sets[split].all_pixels() for split in sets}
    models = {name: build_model(classes, weights=path) for name, path in files.items()}
    models["random weights"] = build_model(classes, first.config, None, size, preprocess=first.metadata["preprocess"])
    rows = []
    for name, model in models.items():
        train, test = (features(model, pixels[split]) for split in ("train", "test"))
        accuracy = knn_accuracy(train, labels["train"], test, labels["test"], args.k, len(classes))
        rows.append({"backbone": name, "knn_accuracy": round(accuracy, 4)})
        print(table([rows[-1]], ["backbone", "knn_accuracy"]).splitlines()[-1], flush=True)
    print(table(rows, ["backbone", "knn_accuracy"]))
    save_results("pretrain_knn", {"data": str(args.data), "k": args.k, "files": files, "rows": rows})


if __name__ == "__main__":
    main()
