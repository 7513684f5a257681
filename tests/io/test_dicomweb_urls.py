"""DICOMweb URLs, credentials and failures without a server (the Orthanc tests cover the real exchange)."""

from __future__ import annotations

import socket

import pytest

from medgen.errors import InputError
from medgen.io.dicomweb import (PASSWORD_ENV, TOKEN_ENV, USER_ENV, _session, is_dicomweb_url, is_query_url,
                                list_series, parse_url, query_series)

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def test_series_and_study_urls_parse_to_root_study_and_series():
    ref = parse_url(f"https://pacs.example:8443/orthanc/dicom-web/studies/{STUDY}/series/{SERIES}")
    assert (ref.base, ref.study_uid, ref.series_uid) == ("https://pacs.example:8443/orthanc/dicom-web", STUDY, SERIES)
    assert ref.url.endswith(f"/studies/{STUDY}/series/{SERIES}")
    study = parse_url(f"http://127.0.0.1:8042/dicom-web/studies/{STUDY}/")
    assert study.series_uid is None and study.series("9.9").url == f"http://127.0.0.1:8042/dicom-web/studies/{STUDY}/series/9.9"
    assert is_dicomweb_url("http://x") and not is_dicomweb_url("/data/ct.nii.gz")
    assert is_query_url("http://h:1/dicom-web/series?PatientID=P1&Modality=MR")


@pytest.mark.parametrize("url", ["http://h/dicom-web", "http://h/dicom-web/studies/abc", "http://h/studies/1.2/instances/3"])
def test_malformed_urls_are_one_line_errors(url):
    with pytest.raises(InputError, match="not a DICOMweb study or series URL") as info:
        parse_url(url)
    assert "Fix:" in info.value.one_line()


def test_credentials_in_the_url_are_refused_and_not_echoed():
    for url in (f"http://alice:s3cret@h/dicom-web/studies/{STUDY}", "http://alice:s3cret@h/dicom-web/series?Modality=MR"):
        with pytest.raises(InputError, match="credentials in the URL") as info:
            parse_url(url) if "studies" in url else query_series(url)
        assert "s3cret" not in info.value.one_line() and TOKEN_ENV in info.value.one_line()


def test_credentials_come_from_the_environment(monkeypatch):
    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    assert _session().auth is None and "Authorization" not in _session().headers
    monkeypatch.setenv(USER_ENV, "alice")
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    assert _session().auth == ("alice", "pw")
    monkeypatch.setenv(TOKEN_ENV, "tok")  # a token wins over basic auth
    session = _session()
    assert session.headers["Authorization"] == "Bearer tok" and session.auth is None


def test_unreachable_server_is_one_line_with_a_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(InputError, match="cannot reach the DICOMweb server") as info:
        list_series(parse_url(f"http://127.0.0.1:{port}/dicom-web/studies/{STUDY}"), "MR")
    assert "Fix: check the host, port" in info.value.one_line()
