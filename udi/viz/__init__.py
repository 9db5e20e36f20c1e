"""Pictures of what a model learned: attention maps, patch-feature PCA, training curves, one HTML report.

Plots are drawn on ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state).
"""
