"""Coded segment metadata for DICOM SEG: SNOMED CT concepts and display colours for label names.

A viewer shows a SEG's segments by their coded *segmented property* (category + type), not by
the free-text label. :func:`segment_codes` maps a label name, as medgen's phantoms
(:data:`medgen.data.phantoms.LABEL_NAMES`) and TotalSegmentator's class maps spell them
(``kidney_left``, ``vertebrae_L3``, ``rib_right_7``, ``portal_vein_and_splenic_vein``...), to

* a category from DICOM CID 7150 (anatomical structure, tissue, substance, abnormal structure);
* a SNOMED CT type, taken from pydicom's DICOM code dictionary by keyword (code values are not
  typed here, so they cannot be mistyped; the one exception, Intestine, is from DICOM CID 4),
  plus a Left/Right modifier for lateral structures;
* the generic Tissue / Tissue concept for names it does not know.

:func:`display_colors` gives N clearly distinct colours (golden-angle hue steps) as CIELab.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass

from pydicom.sr.coding import Code

__all__ = ["SegmentCodes", "segment_codes", "display_colors", "KNOWN_NAMES"]

#: normalised name -> (pydicom ``codes.SCT`` keyword, CID 7150 category keyword).
_TABLE: dict[str, tuple[str, str]] = {}


def _add(keyword: str, category: str, *names: str) -> None:
    for name in names:
        _TABLE[name] = (keyword, category)


A, T, S, M = "AnatomicalStructure", "Tissue", "Substance", "MorphologicallyAbnormalStructure"
# abdominal organs and vessels (phantoms + TotalSegmentator total / total_mr)
_add("Liver", A, "liver")
_add("Spleen", A, "spleen")
_add("Kidney", A, "kidney", "kidneys")
_add("Stomach", A, "stomach")
_add("Pancreas", A, "pancreas")
_add("Gallbladder", A, "gallbladder", "gall_bladder")
_add("AdrenalGland", A, "adrenal_gland", "adrenal")
_add("Duodenum", A, "duodenum")
_add("Intestine", A, "bowel", "intestine", "intestines", "gut")
_add("SmallIntestine", A, "small_bowel", "small_intestine")
_add("Colon", A, "colon")
_add("LargeIntestine", A, "large_bowel", "large_intestine")
_add("Esophagus", A, "esophagus", "oesophagus")
_add("Bladder", A, "urinary_bladder", "bladder")
_add("Prostate", A, "prostate")
_add("Aorta", A, "aorta")
_add("InferiorVenaCava", A, "inferior_vena_cava", "ivc", "vena_cava_inferior")
_add("SuperiorVenaCava", A, "superior_vena_cava", "svc")
_add("PortalVein", A, "portal_vein", "portal_vein_and_splenic_vein")
_add("SplenicVein", A, "splenic_vein")
_add("IliacArtery", A, "iliac_artery")
_add("IliacVein", A, "iliac_vena", "iliac_vein")
_add("CommonCarotidArtery", A, "common_carotid_artery")
_add("SubclavianArtery", A, "subclavian_artery")
_add("BrachiocephalicTrunk", A, "brachiocephalic_trunk")
_add("BrachiocephalicVein", A, "brachiocephalic_vein")
_add("PulmonaryVein", A, "pulmonary_vein")
# chest, head
_add("Lung", A, "lung", "lungs", "lung_middle_lobe")
_add("UpperLobeOfLung", A, "lung_upper_lobe")
_add("LowerLobeOfLung", A, "lung_lower_lobe")
_add("Heart", A, "heart")
_add("Trachea", A, "trachea")
_add("Thyroid", A, "thyroid_gland", "thyroid")
_add("Brain", A, "brain")
_add("Skull", A, "skull")
_add("SpinalCord", A, "spinal_cord")
# skeleton
_add("Vertebra", A, "vertebrae", "vertebra")
_add("Spine", A, "spine")
_add("Sacrum", A, "sacrum")
_add("Rib", A, "rib", "ribs")
_add("CostalCartilage", A, "costal_cartilages", "costal_cartilage")
_add("Sternum", A, "sternum")
_add("Clavicle", A, "clavicula", "clavicle")
_add("Scapula", A, "scapula")
_add("Humerus", A, "humerus")
_add("Femur", A, "femur")
_add("Hip", A, "hip")
_add("Bone", T, "bone", "bones")
# tissues and substances
_add("SkeletalMuscle", T, "muscle", "muscles", "skeletal_muscle", "autochthon", "iliopsoas", "gluteus_maximus",
     "gluteus_medius", "gluteus_minimus")
_add("AdiposeTissue", T, "fat", "adipose", "adipose_tissue", "subcutaneous_fat", "visceral_fat")
_add("SoftTissue", T, "soft_tissue")
_add("Gas", S, "bowel_gas", "gas")
_add("Air", S, "air")
_add("Blood", S, "blood")
# findings
_add("Cyst", M, "kidney_cyst", "cyst")
_add("Lesion", M, "lesion")
_add("Tumor", M, "tumor", "tumour")
_add("Mass", M, "mass")
_add("Nodule", M, "nodule")

KNOWN_NAMES = frozenset(_TABLE)


#: Concepts pydicom's keyword dictionary lacks (code value from DICOM PS3.16 CID 4).
_LITERAL = {"Intestine": Code("113276009", "SCT", "Intestine")}

_SIDES = {"left": "Left", "l": "Left", "right": "Right", "r": "Right"}
_LEVEL = re.compile(r"^([cthls]\d{1,2}|\d{1,2})$")  # vertebra / rib numbers: C1, T12, L3, S1, 7


@dataclass(frozen=True)
class SegmentCodes:
    """The coded concepts of one segment (pydicom ``Code`` objects)."""

    category: object
    type: object
    modifier: object | None = None  # Left / Right for lateral structures
    known: bool = True


def _normalise(name: str) -> tuple[str, str | None]:
    """``"Kidney_Left"`` -> (``"kidney"``, ``"Left"``); ``"vertebrae_L3"`` -> (``"vertebrae"``, None)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    side = next((_SIDES[w] for w in words if w in _SIDES), None)
    words = [w for w in words if w not in _SIDES]
    while len(words) > 1 and _LEVEL.match(words[-1]):
        words.pop()
    return "_".join(words), side


def segment_codes(name: str) -> SegmentCodes:
    """The category, SNOMED CT type and laterality of a label name (generic Tissue when unknown)."""
    from pydicom.sr.codedict import codes
    key, side = _normalise(name)
    entry = _TABLE.get(key)
    if entry is None:
        return SegmentCodes(codes.cid7150.Tissue, codes.SCT.Tissue, None, known=False)
    keyword, category = entry
    modifier = getattr(codes.SCT, side) if side else None
    concept = _LITERAL[keyword] if keyword in _LITERAL else getattr(codes.SCT, keyword)
    return SegmentCodes(getattr(codes.cid7150, category), concept, modifier)


def display_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours: hues a golden angle apart, two lightness levels alternating."""
    out = []
    for i in range(n):
        hue = (i * 0.381966) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out
