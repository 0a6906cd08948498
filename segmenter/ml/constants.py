"""Named constants shared by the whole engine: classes, intensity window, model scale.

Everything that a reader of a result needs in order to interpret it is defined here
once: the class indices of a label map, the CT window that maps Hounsfield units to the
8-bit input domain, and the scale at which the networks see a slice.
"""

from __future__ import annotations

# --- Classes --------------------------------------------------------------------------
# A label map is a uint8 array (H, W) holding one of these values per pixel. The order
# is the seed project's and is also the channel order of the networks' outputs.
GGO = 0  #: ground-glass opacity
CONSOLIDATION = 1  #: consolidation
OTHER_LUNG = 2  #: lung that is neither GGO nor consolidation
BACKGROUND = 3  #: everything outside the lungs

CLASS_NAMES = ("ggo", "consolidation", "other_lung", "background")
NUM_CLASSES = len(CLASS_NAMES)
LESION_CLASSES = (GGO, CONSOLIDATION)
LUNG_CLASSES = (GGO, CONSOLIDATION, OTHER_LUNG)

# --- Input domain ---------------------------------------------------------------------
# The networks read 8-bit grey slices in the domain of the MedSeg training images, the
# only source with expert lesion labels. Slices that carry Hounsfield units (DICOM,
# NIfTI, calibrated 16-bit PNG) are brought there through the window below: HU in
# [LEVEL - WIDTH/2, LEVEL + WIDTH/2] maps linearly onto 0..255 and values outside are
# clipped.
#
# How it was measured (``python -m segmenter.ml.domain``): the MedSeg JPEGs' histogram
# peaks sit at grey 44 (aerated lung; per-image p10-p90 30-73) and 215 (soft tissue;
# 198-232). The kmader slices, calibrated to HU (air -1000), have their lung-mask peak at
# -891 HU and their body peak at +44 HU. The line through (-891 HU, 44) and (+44 HU, 215)
# is the window W 1400 / L -435 (rounded). The usual lung window W 1500 / L -600 puts
# healthy lung at grey 78, where MedSeg's ground glass lies (median 97): that is why
# healthy HU scans used to read as ground glass.
MODEL_WINDOW_WIDTH_HU = 1400.0
MODEL_WINDOW_LEVEL_HU = -435.0
#: The radiologists' lung window, for display and for comparison.
LUNG_WINDOW_WIDTH_HU = 1500.0
LUNG_WINDOW_LEVEL_HU = -600.0
AIR_HU = -1000.0

# --- Model scale ----------------------------------------------------------------------
# The networks see a slice at half the pixel scale of a 512 x 512 CT: a slice whose long
# side is at most REFERENCE_SIDE_PX is shrunk by MODEL_SCALE; a larger one is shrunk so
# that its long side becomes REFERENCE_SIDE_PX * MODEL_SCALE. Training showed (and a
# ground-truth round trip confirms: Dice 0.994 after halving and restoring the MedSeg
# masks) that halving costs next to nothing while making every pass four times cheaper.
REFERENCE_SIDE_PX = 512
MODEL_SCALE = 0.5
# The reference grid in physical terms. No source records its pixel spacing; a 512 px
# chest CT with the usual 350 mm field of view has 0.68 mm pixels (the sample DICOMs:
# 0.625 mm), and the kmader bodies, whole in their 512 px slices, span 462-512 px (5th
# percentile to median). A slice with a known spacing is brought to REFERENCE_PIXEL_MM; a
# PNG/JPEG that shows the whole body has its body's long extent brought to
# REFERENCE_BODY_PX (see preprocess.reference_factor).
REFERENCE_PIXEL_MM = 0.7
REFERENCE_BODY_PX = 500
# A slice cropped to the thorax, with no body outline to take its scale from, is enlarged
# until its long side is at least this (px). The training crops are 221-487 px (MedSeg,
# 10 % under 299) and 259-497 px (Zenodo, 10 % under 319) and were taken as they are, so
# a crop shrunk for a report or a slide (96 px, 160 px) reached the networks at a third
# of their size and was refused. Chosen on held-out cross-validation folds (model card,
# "Scale of small crops"): 320 px refused no shrunk MedSeg crop and left the full-size
# crops' lesion Dice within 0.006; 224 px still refused some.
CROP_MIN_SIDE_PX = 320
# Network inputs are padded to a multiple of this (the encoders' output stride).
SIZE_MULTIPLE = 32

# --- Post-processing and grading ------------------------------------------------------
# Connected lesion regions smaller than this many pixels, counted at the reference scale
# of a 512 x 512 slice (about 0.7 mm per pixel, so 60 px is about 29 mm^2, a disc of 6 mm),
# are not lesions: they are relabelled as other lung, so that noise on a healthy slice
# reads CT-0. Chosen on held-out folds (model card, "Smallest lesion"): from 20 px, 60 px
# raised the lesion-free slices read CT-0 and left the lesion Dice within 0.002.
MIN_LESION_AREA_PX = 60
# A lesion region (GGO and consolidation together, 8-connected) is kept only where the
# networks are sure of it somewhere: at its most confident pixel, p(GGO) + p(consolidation)
# must reach this, else the region becomes other lung (a hysteresis threshold: the label
# itself stays the most probable class). The faint, diffuse "lesions" left on lesion-free
# lungs are mostly dependent density at the bases. Chosen on held-out folds (model card,
# "Faint lesions"): healthy slices read CT-0 90.7 -> 95.0 % (mean of five fold models),
# lesion Dice within 0.006 on every fold.
LESION_MIN_PEAK = 0.9
# The lower edge of a lesion: around the regions kept above, connected lung where
# p(GGO) + p(consolidation) reaches this is lesion too (``postprocess.grow_lesions``). The
# most probable class alone left the experts' infection area under-marked (0.66 x on five
# unseen patients). 1.0 turns the growth off. Chosen on patient-held-out folds (model card,
# "Lower edge of a lesion"): 0.10, the lowest measured, was best on both folds scored
# (infection Dice, predicted / true area, per-patient share error), with lesion-free
# slices read CT-0 as often.
LESION_LOW = 0.10
# A lesion pixel where the slice, smoothed (Gaussian, 2 px), reaches this grey level in the
# model's window is consolidation, whatever the networks say: consolidation is dense enough
# to hide the vessels in it, and the networks, trained on 57 slices that split the two,
# call too little of it consolidation (``postprocess.split_by_density``; keeps the networks'
# own consolidation). MedSeg's radiologist masks: GGO median 98, consolidation 155.
# Chosen on patient-held-out folds (model card, "Ground glass or consolidation"): 130 raised
# consolidation Dice on both folds (0.15 -> 0.59, 0.19 -> 0.49) for GGO +0.02 / -0.02.
CONSOLIDATION_MIN_GREY = 130.0
