"""Loading the training data of ``../shared/data`` into model-scale samples with partial labels.

The sources label different things (see the data README):

* medseg-covid: GGO and consolidation against "neither" (no lung mask);
* kmader-lungs: lesion-free slices, so lung is "other lung" and the rest background;
  their CT numbers are calibrated to HU (air -1000) and kept, so that training can
  render each draw through a different window, as real scans arrive;
* zenodo-covid-expert: expert masks of 925 of the Zenodo images (15 patients): lung,
  infection (GGO or consolidation, no split) and outside the lung, at full weight. They
  are the only masks of a *diseased* lung: consolidated lung is lung;
* zenodo-covid-unlabelled: the other Zenodo images, with another model's soft infection
  maps (lesion or not, a guess).

Each sample therefore carries a *target code* per pixel naming the set of classes the
pixel may belong to (``TARGET_SETS``); the training loss marginalises over that set, so
no source is asked for a distinction it does not make.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..constants import BACKGROUND, CONSOLIDATION, GGO, MODEL_SCALE, OTHER_LUNG
from ..io.imaging import calibrate_uncalibrated_ct, window
from ..model.preprocess import resize_labels_to_model, resize_to_model
from ..paths import DEFAULT_DATA_ROOT  # noqa: F401  (re-exported for train)

log = logging.getLogger(__name__)


# Target codes: which classes a pixel may belong to.
T_GGO, T_CONSOLIDATION, T_OTHER_LUNG, T_BACKGROUND = GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND
T_LUNG = 4  # any lung class (kmader lung)
T_NOT_LESION = 5  # other lung or background (MedSeg unlabelled pixels)
T_LESION = 6  # GGO or consolidation (pseudo-infection)
T_IGNORE = 255
TARGET_SETS: dict[int, tuple[int, ...]] = {
    T_GGO: (GGO,),
    T_CONSOLIDATION: (CONSOLIDATION,),
    T_OTHER_LUNG: (OTHER_LUNG,),
    T_BACKGROUND: (BACKGROUND,),
    T_LUNG: (GGO, CONSOLIDATION, OTHER_LUNG),
    T_NOT_LESION: (OTHER_LUNG, BACKGROUND),
    T_LESION: (GGO, CONSOLIDATION),
}

#: Pseudo-infection maps are trusted only away from their decision boundary.
PSEUDO_LESION_MIN = 192
PSEUDO_CLEAR_MAX = 64


@dataclass
class Sample:
    """One training slice.

    full: uint8 (H, W) lung-windowed slice at its own size; full_codes: uint8 (H, W)
    target codes; source: 'medseg' | 'kmader' | 'expert' | 'zenodo' (pseudo-labelled);
    group: id of the patient or patient-like group; name: file or id; mask: uint8 (H, W)
    MedSeg mask, bool lung mask or expert mask (0 outside, 1 lung, 2 infection), for
    validation; None for pseudo-labelled slices. ``view(scale)`` gives the image and
    codes at a network's scale; image and codes are the view at MODEL_SCALE.
    """

    full: np.ndarray
    full_codes: np.ndarray
    source: str
    group: str
    name: str
    mask: np.ndarray | None = None
    hu: np.ndarray | None = None  # float32 (H, W) Hounsfield units, for sources that have them
    _views: dict = field(default_factory=dict, repr=False)

    def view(self, scale: float = MODEL_SCALE) -> tuple[np.ndarray, np.ndarray]:
        if scale not in self._views:
            self._views[scale] = (
                resize_to_model(self.full, scale),
                resize_labels_to_model(self.full_codes, scale),
            )
        return self._views[scale]

    def hu_view(self, scale: float = MODEL_SCALE) -> np.ndarray:
        """float32 (h, w) Hounsfield units at a network's scale (area-averaged)."""
        if self.hu is None:
            raise ValueError(f"{self.name}: this sample carries no Hounsfield units")
        key = ("hu", scale)
        if key not in self._views:
            self._views[key] = resize_to_model(self.hu, scale)
        return self._views[key]

    @property
    def image(self) -> np.ndarray:
        return self.view()[0]

    @property
    def codes(self) -> np.ndarray:
        return self.view()[1]


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def load_medseg(root: Path) -> list[Sample]:
    """MedSeg slices: mask 1 -> GGO, 2 -> consolidation, 0 -> not lesion."""
    folder = Path(root) / "medseg-covid"
    samples = []
    for path in sorted((folder / "images").glob("*.jpg"), key=lambda p: _natural_key(p.name)):
        image = np.asarray(Image.open(path).convert("L"))
        mask = np.asarray(Image.open(folder / "masks" / f"{path.stem}.png"))
        if mask.shape != image.shape:
            raise ValueError(f"{path.name}: mask shape {mask.shape} != image shape {image.shape}")
        codes = np.full(mask.shape, T_NOT_LESION, np.uint8)
        codes[mask == 1] = T_GGO
        codes[mask == 2] = T_CONSOLIDATION
        samples.append(Sample(image, codes, "medseg", "", path.stem, mask))
    return samples


def kmader_to_hu(values: np.ndarray) -> np.ndarray:
    """kmader's uncalibrated int16 CT numbers -> float32 HU (air peak -1000, tissue +40)."""
    return calibrate_uncalibrated_ct(values)


def kmader_to_u8(values: np.ndarray) -> np.ndarray:
    """kmader's uncalibrated int16 CT numbers -> uint8 in the model's window."""
    return window(kmader_to_hu(values))


def load_kmader(root: Path) -> list[Sample]:
    """kmader slices, lesion-free: lung -> other lung, elsewhere -> background."""
    folder = Path(root) / "kmader-lungs"
    images = np.load(folder / "images.npz")
    masks = np.load(folder / "lung_masks.npz")
    if list(images["ids"]) != list(masks["ids"]):
        raise ValueError("kmader images.npz and lung_masks.npz list different ids")
    samples = []
    for ident, values, lung in zip(images["ids"], images["images"], masks["masks"]):
        hu = kmader_to_hu(values)
        codes = np.where(lung, T_OTHER_LUNG, T_BACKGROUND).astype(np.uint8)
        samples.append(Sample(window(hu), codes, "kmader", "", str(ident), lung, hu=hu))
    return samples


EXPERT_FOLDER = "zenodo-covid-expert"
#: Expert mask values (zenodo-covid-expert/masks).
EXPERT_OUTSIDE, EXPERT_LUNG, EXPERT_INFECTION = 0, 1, 2


def zenodo_patient(case: str) -> str:
    """The patient of a Zenodo case name: Radiopaedia's series of one patient share the case
    number after ``pneumonia-`` (10_85902_1 and 10_85902_3; 29_86490_1 and 29_86491_1)."""
    m = re.search(r"pneumonia-(\d+)_", case)
    return f"radiopaedia-{m.group(1)}" if m else case


def expert_cases(root: Path) -> dict[str, str]:
    """stem -> case of every image with an expert mask (``cases.csv``); {} without the folder."""
    path = Path(root) / EXPERT_FOLDER / "cases.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["stem"]: row["case"] for row in csv.DictReader(f)}


def load_expert(root: Path) -> list[Sample]:
    """Zenodo slices with expert masks: outside the lung -> background, lung -> other lung,
    infection -> GGO or consolidation (the masks do not split them). Grouped by patient."""
    folder = Path(root)
    samples = []
    for stem, case in sorted(expert_cases(root).items(), key=lambda kv: _natural_key(kv[0])):
        image = np.asarray(Image.open(folder / "zenodo-covid-unlabelled" / "images" / f"{stem}.jpg").convert("L"))
        mask = np.asarray(Image.open(folder / EXPERT_FOLDER / "masks" / f"{stem}.png"))
        if mask.shape != image.shape:
            raise ValueError(f"{stem}: expert mask shape {mask.shape} != image shape {image.shape}")
        codes = np.full(mask.shape, T_BACKGROUND, np.uint8)
        codes[mask == EXPERT_LUNG] = T_OTHER_LUNG
        codes[mask == EXPERT_INFECTION] = T_LESION
        samples.append(Sample(image, codes, "expert", f"zenodo-{zenodo_patient(case)}", stem, mask))
    return samples


def load_zenodo(root: Path, limit: int | None = None, exclude: set[str] = frozenset()) -> list[Sample]:
    """Zenodo slices with pseudo-infection maps: confident lesion / confident clear / ignore.
    Images named in ``exclude`` (those with expert masks) are left out."""
    folder = Path(root) / "zenodo-covid-unlabelled"
    paths = sorted((folder / "images").glob("*.jpg"), key=lambda p: _natural_key(p.name))
    paths = [p for p in paths if p.stem not in exclude]
    if limit is not None:
        paths = paths[:: max(1, len(paths) // limit)][:limit]
    samples = []
    for path in paths:
        pseudo_path = folder / "pseudo-infection" / f"{path.stem}.png"
        if not pseudo_path.is_file():
            continue
        image = np.asarray(Image.open(path).convert("L"))
        pseudo = np.asarray(Image.open(pseudo_path).convert("L"))
        if pseudo.shape != image.shape:
            pseudo = cv2.resize(pseudo, image.shape[::-1], interpolation=cv2.INTER_LINEAR)
        codes = np.full(image.shape, T_IGNORE, np.uint8)
        codes[pseudo >= PSEUDO_LESION_MIN] = T_LESION
        codes[pseudo <= PSEUDO_CLEAR_MAX] = T_NOT_LESION
        case = path.stem.removeprefix("Data-1_").rsplit("_", 1)[0]
        samples.append(Sample(image, codes, "zenodo", f"zenodo-{zenodo_patient(case)}", path.stem))
    return samples


# --- Grouping and splitting ---------------------------------------------------------------


def thumbnail(image: np.ndarray, size: int = 64) -> np.ndarray:
    """Zero-mean, unit-norm float32 vector of a size x size thumbnail of the central
    60 % of the image (which leaves out field-of-view circles and the table)."""
    h, w = image.shape
    image = image[int(0.2 * h) : int(0.8 * h), int(0.2 * w) : int(0.8 * w)]
    t = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    norm = float(np.linalg.norm(t))
    return t / norm if norm > 0 else t


def similarity_groups(images: list[np.ndarray], threshold: float) -> list[int]:
    """Group images whose thumbnails correlate above ``threshold`` (transitively).

    Slices of one patient look alike; without patient ids this is the closest we get to
    a patient-grouped split. Returns a group index per image.
    """
    thumbs = np.stack([thumbnail(im) for im in images])
    corr = thumbs @ thumbs.T
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(corr, 1) > threshold)):
        parent[find(int(i))] = find(int(j))
    roots = [find(i) for i in range(len(images))]
    relabel = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [relabel[r] for r in roots]


def assign_groups(samples: list[Sample], threshold: float) -> None:
    """Fill ``group`` of each sample from thumbnail similarity, in place."""
    for k, g in enumerate(similarity_groups([s.image for s in samples], threshold)):
        samples[k].group = f"{samples[k].source}-g{g}"


def grouped_folds(samples: list[Sample], folds: int, seed: int) -> list[int]:
    """A fold index (0..folds-1) per sample, whole groups to a fold, the folds about equal
    in slices: groups in a seeded random order, each to the fold with fewest slices so far."""
    if folds < 2:
        raise ValueError("k-fold needs at least two folds")
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(samples):
        groups.setdefault(s.group, []).append(k)
    names = sorted(groups)
    np.random.default_rng(seed).shuffle(names)
    sizes = [0] * folds
    fold_of = [0] * len(samples)
    for name in names:
        target = min(range(folds), key=lambda f: (sizes[f], f))
        sizes[target] += len(groups[name])
        for k in groups[name]:
            fold_of[k] = target
    return fold_of


def grouped_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split whole groups into (train, val) so that about ``val_fraction`` of slices are val."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    names = sorted(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    target = val_fraction * len(samples)
    val_names: set[str] = set()
    count = 0
    for name in names:
        if count >= target:
            break
        if count + len(groups[name]) > 1.5 * target and count > 0:
            continue
        val_names.add(name)
        count += len(groups[name])
    train = [s for s in samples if s.group not in val_names]
    val = [s for s in samples if s.group in val_names]
    return train, val
