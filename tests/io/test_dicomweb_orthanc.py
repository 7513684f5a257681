"""DICOMweb in and out against a REAL Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``).

The test starts Orthanc on a free loopback port with a temporary storage folder and its own
configuration (basic auth with a generated password), stores the MRI-DIR MR DICOM subset into
it, segments the series straight from its DICOMweb URL, pushes the DICOM SEG (and the synthetic
CT as a new series) back, queries them back and compares them voxel for voxel with the NIfTI
outputs. Skipped with the reason when Orthanc is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from seg_models import NAMES, medgen_segmenter_bundle

from medgen.cli import main
from medgen.io.dicom_seg import read_dicom_seg
from medgen.io.dicomweb import PASSWORD_ENV, TOKEN_ENV, USER_ENV, download_series, list_series, parse_url
from medgen.io.dicomweb_testing import orthanc_missing, orthanc_server, upload_folder
from medgen.io.readers import read_volume

pytestmark = [pytest.mark.real_data, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(orthanc_missing() is not None, reason=str(orthanc_missing()))]


@pytest.fixture(scope="module")
def mr_series(sample_data):
    folder = sample_data / "mridir_phantom" / "mr_t2_dicom_subset"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="module")
def pacs(mr_series, tmp_path_factory):
    """Orthanc holding the MR series; yields (server, study URL, series URL)."""
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        upload_folder(server, mr_series)
        ds = pydicom.dcmread(next(mr_series.glob("*.dcm")), stop_before_pixels=True)
        study = f"{server.dicomweb}/studies/{ds.StudyInstanceUID}"
        yield server, study, f"{study}/series/{ds.SeriesInstanceUID}"


@pytest.fixture
def credentials(pacs, monkeypatch):
    server = pacs[0]
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv(USER_ENV, server.user)
    monkeypatch.setenv(PASSWORD_ENV, server.password)
    return server


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return medgen_segmenter_bundle(tmp_path_factory.mktemp("seg") / "bundle", spacing=(2.0, 2.0, 2.5))


def _series_of(study: str, modality: str, tmp_path):
    refs = list_series(parse_url(study), modality)
    return [download_series(r, tmp_path / f"{modality}_{i}") for i, r in enumerate(refs)]


def test_segment_mr_from_dicomweb_pushes_seg_and_sct_equal_to_the_nifti_outputs(pacs, credentials, bundle,
                                                                                 mr_series, tmp_path, caplog):
    _, study, series = pacs
    out = tmp_path / "out" / "mask.nii.gz"
    with caplog.at_level("DEBUG"):
        rc = main(["segment-mr", "-v", "-i", series, "-o", str(out), "--translator", "none", "--segmenter",
                   str(bundle), "--push-seg", "--save-sct", "--device", "cpu", "--precision", "fp32"])
    assert rc == 0
    assert credentials.password not in caplog.text  # credentials never reach a log
    mask = read_volume(out, kind="label")
    assert mask.same_grid(read_volume(mr_series)) and len(np.unique(mask.array)) >= 2
    assert (tmp_path / "out" / "mask_seg.dcm").exists()
    # the SEG, queried back from the server, equals the NIfTI mask voxel for voxel
    [seg_folder] = _series_of(study, "SEG", tmp_path)
    seg, names = read_dicom_seg(next(seg_folder.glob("*.dcm")), mr_series)
    np.testing.assert_array_equal(seg.array, mask.array)
    assert {names[i] for i in np.unique(seg.array) if i} <= set(NAMES.values())
    # the synthetic CT came back as a new CT series of the same study, in HU, on the MR grid
    [sct_folder] = _series_of(study, "CT", tmp_path)
    sct_remote, sct_local = read_volume(sct_folder), read_volume(tmp_path / "out" / "mask_sct.nii.gz")
    assert sct_remote.same_grid(sct_local)
    np.testing.assert_array_equal(sct_remote.array, sct_local.array)
    head = pydicom.dcmread(next(sct_folder.glob("*.dcm")), stop_before_pixels=True)
    src = pydicom.dcmread(next(mr_series.glob("*.dcm")), stop_before_pixels=True)
    assert (head.StudyInstanceUID, head.FrameOfReferenceUID, head.PatientID) == \
           (src.StudyInstanceUID, src.FrameOfReferenceUID, src.PatientID)
    assert head.SeriesInstanceUID != src.SeriesInstanceUID


def test_study_url_and_query_batches_segment_every_mr_series_and_resume(pacs, credentials, bundle, mr_series,
                                                                          tmp_path):
    _, study, series = pacs
    out = tmp_path / "batch"
    args = ["segment", "-q", "-i", study, "--modality", "MR", "-o", str(out), "-m", str(bundle), "--no-mlflow",
            "--device", "cpu", "--precision", "fp32"]
    assert main(args) == 0
    summary = json.loads((out / "segment_summary.json").read_text())
    [case] = summary["cases"]
    assert case["status"] == "ok" and case["input"] == series
    assert case["case_id"] == f"series_{parse_url(series).series_uid}"
    assert (out / f"{case['case_id']}.nii.gz").exists()
    assert main(args) == 0  # resume: nothing pulled or redone
    assert [c["status"] for c in json.loads((out / "segment_summary.json").read_text())["cases"]] == ["skipped"]
    # a QIDO-RS query as the batch: every MR series of the patient (the pushed SEG/CT series are not MR)
    patient = pydicom.dcmread(next(mr_series.glob("*.dcm")), stop_before_pixels=True).PatientID
    query = f"{credentials.dicomweb}/series?PatientID={patient}"
    assert main(["segment", "-q", "-i", query, "--modality", "MR", "-o", str(tmp_path / "q"), "-m", str(bundle),
                 "--no-mlflow", "--device", "cpu", "--precision", "fp32"]) == 0
    [case] = json.loads((tmp_path / "q" / "segment_summary.json").read_text())["cases"]
    assert case["status"] == "ok" and case["input"] == series


def test_dicomweb_without_or_with_wrong_credentials_is_one_line(pacs, monkeypatch, bundle, tmp_path, capsys):
    server, study, series = pacs
    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    args = ["segment", "-i", series, "-o", str(tmp_path / "m.nii.gz"), "-m", str(bundle), "--no-mlflow"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 401" in err[0] and USER_ENV in err[0]
    # credentials in the URL are refused, and the password is not echoed
    with_creds = series.replace("http://", f"http://{server.user}:{server.password}@")
    assert main(["segment", "-i", with_creds, "-o", str(tmp_path / "m.nii.gz"), "-m", str(bundle),
                 "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "credentials in the URL" in err and server.password not in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_translate_takes_dicomweb_series_and_study_urls(pacs, credentials, mr_series, tmp_path):
    """``medgen translate`` from the PACS: the same synthetic CT as from the local DICOM folder."""
    from medgen.pipelines.train_translator import export_translator
    from medgen.runtime import seed_everything
    from medgen.training.translator import TranslatorConfig, build_networks
    _, study, series = pacs
    config = TranslatorConfig.model_validate({
        "model": {"spatial_dims": 2, "context": 3, "features": 4, "n_blocks": 1}, "data": {"patch_size": [16, 16]},
        "preprocess": {"ct": {"modality": "ct", "ct": {"window": [-1000, 1500]}}}})
    seed_everything(0)
    bundle = export_translator(tmp_path / "tr", config, build_networks(config.model)["g_mr2ct"], steps=0)
    run = ["--device", "cpu", "--precision", "fp32", "-m", str(bundle)]
    assert main(["translate", "-q", "-i", str(mr_series), "-o", str(tmp_path / "local.nii.gz"), *run]) == 0
    assert main(["translate", "-q", "-i", series, "-o", str(tmp_path / "remote.nii.gz"), *run]) == 0
    assert main(["translate", "-q", "-i", study, "-o", str(tmp_path / "batch"), *run]) == 0
    local = read_volume(tmp_path / "local.nii.gz")
    for path in (tmp_path / "remote.nii.gz", tmp_path / "batch" / f"series_{parse_url(series).series_uid}_sct.nii.gz"):
        remote = read_volume(path)
        assert remote.same_grid(local)
        np.testing.assert_array_equal(remote.array, local.array)
