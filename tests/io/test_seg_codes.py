"""Segment codes: SNOMED CT concepts for phantom and TotalSegmentator names, generic tissue otherwise."""

from __future__ import annotations

import json

import pytest

from medgen.data.phantoms import LABEL_NAMES
from medgen.io.seg_codes import display_colors, segment_codes


@pytest.mark.parametrize("name,value,side", [
    ("liver", "10200004", None), ("spleen", "78961009", None), ("kidney_left", "64033007", "Left"),
    ("kidney_right", "64033007", "Right"), ("stomach", "69695003", None), ("pancreas", "15776009", None),
    ("aorta", "15825003", None), ("inferior_vena_cava", "64131007", None), ("vertebrae_L3", "51282000", None),
    ("rib_left_7", "113197003", "Left"), ("muscle", "127954009", None), ("fat", "55603005", None),
    ("bowel", "113276009", None), ("small_bowel", "30315005", None), ("colon", "71854001", None)])
def test_named_organs_get_their_snomed_code_and_laterality(name, value, side):
    codes = segment_codes(name)
    assert codes.known and codes.type.scheme_designator == "SCT" and codes.type.value == value
    assert (codes.modifier.meaning if codes.modifier else None) == side


def test_unknown_names_get_generic_tissue():
    codes = segment_codes("my_custom_structure")
    assert not codes.known and (codes.category.value, codes.type.value) == ("85756007", "85756007")


def test_every_phantom_label_is_coded():
    assert all(segment_codes(name).known for i, name in LABEL_NAMES.items() if i)


@pytest.mark.real_data
@pytest.mark.real_data
def test_totalsegmentator_class_maps_are_nearly_all_coded(sample_data):
    path = sample_data / "totalsegmentator" / "class_map_total_and_total_mr.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    for task, names in json.loads(path.read_text()).items():
        unknown = [n for n in names.values() if not segment_codes(n).known]
        assert len(unknown) <= 0.05 * len(names), (task, unknown)


def test_display_colors_are_distinct():
    colors = display_colors(200)
    assert len(set(colors)) == 200 and all(0 <= c <= 255 for rgb in colors for c in rgb)
