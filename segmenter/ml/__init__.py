"""The segmentation engine: plain Python, numpy and torch; never imports Django.

Reading slices (``imaging``), pre- and post-processing, the ensemble (``ensemble``),
severity grading (``severity``), overlays, metrics, training, evaluation and the
benchmark each live in a module of their own.
"""

import os

# OpenMP threads that spin while they wait make torch 30x slower whenever another
# process shares the cores (measured here: a UNet pass of 0.1 s took 3.2 s beside a
# training run). Passive waiting costs nothing measurable when the cores are free. It
# must be set before torch loads its OpenMP runtime, hence here, ahead of any import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
