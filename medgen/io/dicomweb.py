"""DICOMweb (QIDO-RS / WADO-RS / STOW-RS) access to a PACS with ``dicomweb-client``.

Hospital scans live in a PACS, not in folders. medgen names a series by its DICOMweb URL::

    http(s)://HOST:PORT/<dicomweb root>/studies/{StudyInstanceUID}/series/{SeriesInstanceUID}

a whole study by ``.../studies/{StudyInstanceUID}`` (a batch: its series of one modality) and a
QIDO-RS query by ``.../series?Modality=MR&PatientID=...`` (a batch: every series it finds).
A series is pulled into a local folder (one ``<SOPInstanceUID>.dcm`` per instance) so the rest of
medgen reads it like any DICOM folder; results (DICOM SEG, synthetic CT series) are stored back
with STOW-RS.

Credentials come ONLY from the environment, never from the command line, the URL or a log:

* ``MEDGEN_DICOMWEB_TOKEN``: sent as ``Authorization: Bearer <token>``;
* ``MEDGEN_DICOMWEB_USER`` and ``MEDGEN_DICOMWEB_PASSWORD``: HTTP basic authentication.

A URL with ``user:password@`` in it is refused. Server and network failures become one
:class:`~medgen.errors.InputError` / :class:`~medgen.errors.OutputError` line with a fix.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit

from medgen.errors import InputError, MedgenError, OutputError

log = logging.getLogger(__name__)

TOKEN_ENV = "MEDGEN_DICOMWEB_TOKEN"
USER_ENV = "MEDGEN_DICOMWEB_USER"
PASSWORD_ENV = "MEDGEN_DICOMWEB_PASSWORD"
RETRY_ATTEMPTS = 3
CREDENTIALS_FIX = f"set {TOKEN_ENV} (bearer token) or {USER_ENV} and {PASSWORD_ENV} (basic auth) in the environment"

_URL = re.compile(r"^(?P<base>https?://[^/?#]+(?:/[^?#]*?)?)/studies/(?P<study>[0-9.]+)"
                  r"(?:/series/(?P<series>[0-9.]+))?/?$")

T = TypeVar("T")


def is_dicomweb_url(text) -> bool:
    """True for ``http://`` / ``https://`` strings (validated by :func:`parse_url`)."""
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class DicomWebRef:
    """A study (``series_uid`` None) or one series on a DICOMweb server rooted at ``base``."""

    base: str
    study_uid: str
    series_uid: str | None = None

    @property
    def url(self) -> str:
        tail = f"/series/{self.series_uid}" if self.series_uid else ""
        return f"{self.base}/studies/{self.study_uid}{tail}"

    def series(self, series_uid: str) -> "DicomWebRef":
        return DicomWebRef(self.base, self.study_uid, series_uid)


def _refuse_credentials(text: str) -> None:
    """Raise :class:`InputError` (without echoing them) when the URL ``text`` embeds a user or password."""
    parts = urlsplit(text)
    if parts.username or parts.password:
        raise InputError("has credentials in the URL; medgen never takes them on the command line",
                         path=f"{parts.scheme}://{parts.hostname}{parts.path}", fix=CREDENTIALS_FIX)


def parse_url(text: str) -> DicomWebRef:
    """The server root, study and (optional) series of a DICOMweb URL.

    Raises:
        InputError: not a study/series URL, or credentials embedded in it.
    """
    _refuse_credentials(text)
    match = _URL.match(text)
    if not match:
        raise InputError("is not a DICOMweb study or series URL", path=text,
                         fix="use http(s)://HOST:PORT/<dicomweb root>/studies/<StudyInstanceUID>"
                             "[/series/<SeriesInstanceUID>]")
    return DicomWebRef(match.group("base").rstrip("/"), match.group("study"), match.group("series"))


def _session():
    """A requests session carrying the environment's credentials (nothing else is ever used)."""
    import requests
    session = requests.Session()
    token = os.environ.get(TOKEN_ENV)
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, password or "")
    return session


def client(base: str):
    """A ``DICOMwebClient`` for the server root ``base`` with the environment's credentials."""
    from dicomweb_client import DICOMwebClient
    web = DICOMwebClient(base, session=_session(), timeout=(10, 300))
    # a busy PACS (HTTP 429/503/504) or a dropped connection is retried, but briefly: 3 attempts,
    # 1 s and 2 s apart (the library's default waits ~30 s before reporting an unreachable server)
    web.set_http_retry_params(max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=500)
    return web


def _call(what: str, url: str, fn: Callable[[], T], *, error=InputError) -> T:
    """Run one DICOMweb request; HTTP and network failures become one medgen error line."""
    import requests
    try:
        return fn()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise error(f"{what} was refused by the server (HTTP {status}: not authorised)", path=url,
                        fix=CREDENTIALS_FIX) from None
        if status == 404:
            raise error(f"{what}: not found on the server (HTTP 404)", path=url,
                        fix="check the study/series UIDs and the DICOMweb root in the URL") from None
        raise error(f"{what} failed (HTTP {status})", path=url, fix="check the server's log") from None
    except requests.ConnectionError:
        raise error(f"{what}: cannot reach the DICOMweb server", path=url,
                    fix="check the host, port and that the server is running") from None
    except requests.Timeout:
        raise error(f"{what}: the DICOMweb server did not answer in time", path=url,
                    fix="retry, or check the server's load") from None
    except MedgenError:
        raise
    except (requests.RequestException, ValueError, OSError) as exc:
        raise error(f"{what} failed ({type(exc).__name__}: {str(exc)[:160]})", path=url,
                    fix="check the URL points at a DICOMweb root") from None


def _value(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def list_series(ref: DicomWebRef, modality: str | None = None) -> list[DicomWebRef]:
    """Every series of ``ref``'s study (optionally of one modality, e.g. ``MR``), as series refs."""
    filters = {"Modality": modality} if modality else None
    found = _call("listing the study's series", ref.url,
                  lambda: client(ref.base).search_for_series(ref.study_uid, search_filters=filters))
    series = [ref.series(str(_value(item, "0020000E"))) for item in found
              if _value(item, "0020000E") and (not modality or _value(item, "00080060") == modality)]
    return sorted(series, key=lambda r: r.series_uid)


_QUERY = re.compile(r"^(?P<base>https?://[^/?#]+(?:/[^?#]*?)?)/series\?(?P<query>[^#]*)$")


def is_query_url(text: str) -> bool:
    """True for a QIDO-RS series query URL: ``.../series?Modality=MR&PatientID=...``."""
    return bool(_QUERY.match(str(text)))


def query_series(text: str, modality: str | None = None) -> list[DicomWebRef]:
    """The series a QIDO-RS query URL ``<root>/series?KEY=VALUE&...`` finds (``modality`` added when the
    query does not name one), each as a series ref.

    Raises:
        InputError: a malformed query, credentials in the URL, or the server's refusal.
    """
    from urllib.parse import parse_qsl
    _refuse_credentials(text)
    match = _QUERY.match(text)
    if not match:
        raise InputError("is not a DICOMweb series query", path=text,
                         fix="use http(s)://HOST:PORT/<dicomweb root>/series?Modality=MR&PatientID=...")
    base, filters = match.group("base").rstrip("/"), dict(parse_qsl(match.group("query")))
    if modality and "Modality" not in filters and "00080060" not in filters:
        filters["Modality"] = modality
    found = _call("querying series", text,
                  lambda: client(base).search_for_series(search_filters=filters, get_remaining=True))
    refs = [DicomWebRef(base, str(_value(item, "0020000D")), str(_value(item, "0020000E"))) for item in found
            if _value(item, "0020000D") and _value(item, "0020000E")]
    return sorted(refs, key=lambda r: (r.study_uid, r.series_uid))


def download_series(ref: DicomWebRef, folder: str | Path) -> Path:
    """Pull every instance of a series into ``folder`` (``<SOPInstanceUID>.dcm``); returns ``folder``."""
    if not ref.series_uid:
        raise InputError("names a study, not a series", path=ref.url, fix="add /series/<SeriesInstanceUID>")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    datasets = _call("retrieving the series", ref.url,
                     lambda: client(ref.base).retrieve_series(ref.study_uid, ref.series_uid))
    if not datasets:
        raise InputError("the series has no instances on the server", path=ref.url, fix="check the series UID")
    for ds in datasets:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    log.info("pulled %d instances of %s", len(datasets), ref.url)
    return folder


def store(ref: DicomWebRef, paths: list[str | Path]) -> list[str]:
    """STOW-RS the DICOM files ``paths`` into ``ref``'s study; returns the SOPInstanceUIDs stored.

    Raises:
        OutputError: the server refused the request or any instance (its failure reason is shown).
    """
    import pydicom
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        if str(ds.StudyInstanceUID) != ref.study_uid:
            raise OutputError(f"belongs to study {ds.StudyInstanceUID}, not {ref.study_uid}", path=str(paths[0]),
                              fix="store results into the study they were computed from")
    response = _call("storing results", ref.url,
                     lambda: client(ref.base).store_instances(datasets, study_instance_uid=ref.study_uid),
                     error=OutputError)
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
        raise OutputError(f"the server refused {len(failed)} of {len(datasets)} instances (failure reason "
                          f"{', '.join(reasons)})", path=ref.url, fix="check the server's log")
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    log.info("stored %d instance(s) into %s", len(uids), DicomWebRef(ref.base, ref.study_uid).url)
    return uids
