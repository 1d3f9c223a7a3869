"""The model: configurations, backbone layers, the classifier, the vitkit model file, the registry
of published checkpoints, readers of other tools' files, and export for serving."""
