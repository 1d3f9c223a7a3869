"""Explanations: attention rollout and gradient maps, their figures, output files and the HTML
report."""
