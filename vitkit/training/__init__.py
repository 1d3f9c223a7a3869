"""Training: :func:`~vitkit.training.train.train` and its steps (settings from the recipes, data,
model, fitting with callbacks, outputs), run state and resume, and data-parallel training over
several devices and hosts."""
