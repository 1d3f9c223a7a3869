"""From photos to model input: manifests, safe decoding, the image cache, batch streams, pixel CSVs,
in-model scaling and augmentation, and batch mixing."""
