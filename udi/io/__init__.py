"""File formats on disk: atomic writes, training checkpoints and exported backbones.

The lowest layer of the package (it imports nothing else from ``udi``), so that models,
methods, training and evaluation can all read and write these files.
"""
