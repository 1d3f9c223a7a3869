"""Training: the fit loop, the recipes and their defaults, run state and resume, and data-parallel
training over several devices and hosts."""
