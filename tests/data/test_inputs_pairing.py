"""The one inputs/pairing API (medgen.data.inputs): suffix-stripped case ids, explicit positional pairing,
one-line errors for mismatches that cannot be resolved, and the one label-name reader."""

from __future__ import annotations

import json
import logging

import pytest

from medgen.data.inputs import CaseInput, collect_inputs, collect_pairs, pair_inputs
from medgen.data.label_names import read_label_names
from medgen.errors import InputError


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def _ids(pairs):
    return [(i.case_id, lab.case_id) for i, lab in pairs]


def test_pairs_by_case_id_ignoring_role_suffixes(tmp_path, caplog):
    imgs = _touch(tmp_path / "img", "p1_ct.nii.gz", "p2_ct.nii.gz", "p3.nii.gz")
    labs = _touch(tmp_path / "lab", "p3_labels.nii.gz", "p1_seg.nii.gz", "p2_mask.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medgen.data.inputs"):
        pairs = collect_pairs([imgs], [labs])
    assert _ids(pairs) == [("p1_ct", "p1_seg"), ("p2_ct", "p2_mask"), ("p3", "p3_labels")]
    assert not caplog.records  # matched by id: nothing positional to warn about


def test_positional_pairing_only_when_no_id_matches_and_counts_equal(tmp_path, caplog):
    imgs = _touch(tmp_path / "img", "a.nii.gz", "b.nii.gz")
    labs = _touch(tmp_path / "lab", "x.nii.gz", "y.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medgen.data.inputs"):
        pairs = collect_pairs([imgs], [labs])
    assert _ids(pairs) == [("a", "x"), ("b", "y")]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "by position" in warning[0] and "a <- x" in warning[0] and "b <- y" in warning[0]
    # counts differ and no id matches: one error line, no guess
    _touch(tmp_path / "lab", "z.nii.gz")
    with pytest.raises(InputError, match=r"2 images but 3 label maps, and no case ids match\. Fix: "):
        collect_pairs([imgs], [labs])


def test_partial_id_match_is_an_error_not_a_positional_guess(tmp_path):
    # before: one id differing made every pair positional (silently wrong when the orders differ)
    imgs = _touch(tmp_path / "img", "p1.nii.gz", "p2.nii.gz")
    labs = _touch(tmp_path / "lab", "p1_seg.nii.gz", "q2_seg.nii.gz")
    with pytest.raises(InputError) as err:
        collect_pairs([imgs], [labs])
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(labs / "q2_seg.nii.gz") + ": label map 'q2_seg' matches 0 image")
    assert ". Fix: " in line


def test_ambiguous_missing_and_duplicate_label_maps(tmp_path):
    img = [CaseInput("p1", tmp_path / "p1.nii.gz"), CaseInput("p1_ct", tmp_path / "p1_ct.nii.gz")]
    with pytest.raises(InputError, match="'p1_seg' matches 2 image cases"):
        pair_inputs(img, [CaseInput("p1_seg", tmp_path / "p1_seg.nii.gz")])
    img = [CaseInput("p1", tmp_path / "p1.nii.gz"), CaseInput("p2", tmp_path / "p2.nii.gz")]
    two = [CaseInput("p1_seg", tmp_path / "p1_seg.nii.gz"), CaseInput("p1_label", tmp_path / "p1_label.nii.gz")]
    with pytest.raises(InputError, match="a second label map for case 'p1'"):
        pair_inputs(img, two)
    with pytest.raises(InputError, match="image 'p2' has no label map"):
        pair_inputs(img, two[:1])
    # preprocess: not every image needs a label map
    assert _ids(pair_inputs(img, two[:1], every_image=False)) == [("p1", "p1_seg")]


def test_collect_inputs_empty_folder_and_sources_naming(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: is an empty folder"):
        collect_inputs([tmp_path / "empty"])
    files = [_touch(tmp_path / f"case{i}", "ct.nii.gz") / "ct.nii.gz" for i in range(2)]
    assert [c.case_id for c in collect_inputs(files)] == ["ct", "ct_2"]
    assert [c.case_id for c in collect_inputs(files, sources=True)] == ["case0", "case1"]


def test_read_label_names_one_reader(tmp_path):
    assert read_label_names(None) == {}
    assert read_label_names({"3": "liver"}) == {3: "liver", 0: "background"}
    path = tmp_path / "names.json"
    path.write_text(json.dumps({"1": "spleen"}))
    assert read_label_names(path) == {1: "spleen", 0: "background"}
    path.write_text(json.dumps({"a": "spleen"}))
    with pytest.raises(InputError, match="names.json: label-name keys must be integer ids"):
        read_label_names(path)
