"""The segmentation engine: plain Python, numpy and torch; never imports Django.

Reading slices (``imaging``), pre- and post-processing, the ensemble (``ensemble``),
severity grading (``severity``), overlays, metrics, training, evaluation and the
benchmark each live in a module of their own.
"""
