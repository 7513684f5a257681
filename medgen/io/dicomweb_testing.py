"""A throwaway Orthanc PACS with its DICOMweb plugin, for tests and benchmarks.

:func:`orthanc_server` starts the real Debian ``orthanc`` binary on a free loopback port with a
temporary storage folder and its own JSON configuration (DICOMweb plugin on, DICOM network
listener off, HTTP basic authentication with a generated password), waits until it answers, and
stops it afterwards. :func:`orthanc_missing` says why it cannot run here (for ``pytest.skip``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ORTHANC = "Orthanc"
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: its HTTP root, DICOMweb root and basic-auth user/password."""

    url: str
    dicomweb: str
    user: str
    password: str


def _binary() -> str | None:
    return shutil.which(ORTHANC) or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()),
                                         None)


def _plugin() -> str | None:
    return next((p for p in PLUGIN_CANDIDATES if Path(p).exists()), None)


def orthanc_missing() -> str | None:
    """``None`` when Orthanc and its DICOMweb plugin are installed, else the reason and the fix."""
    if _binary() is None:
        return "Orthanc is not installed (apt-get install -y orthanc orthanc-dicomweb)"
    if _plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install -y orthanc-dicomweb)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def orthanc_server(workdir: str | Path | None = None, *, timeout: float = 60.0) -> Iterator[OrthancServer]:
    """Start Orthanc on ``127.0.0.1:<free port>``; yield its addresses; stop it and remove its storage."""
    import requests
    reason = orthanc_missing()
    if reason:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="medgen-orthanc-", dir=workdir))
    port, password = _free_port(), secrets.token_urlsafe(12)
    config = {"Name": "medgen-test", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
              "HttpPort": port, "HttpServerEnabled": True, "RemoteAccessAllowed": False,
              "DicomServerEnabled": False, "DicomPort": _free_port(),
              "AuthenticationEnabled": True, "RegisteredUsers": {"medgen": password},
              "Plugins": [_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
              "HttpThreadsCount": 4, "StorageCompression": False, "LogExportedResources": False}
    (root / "orthanc.json").write_text(json.dumps(config, indent=1))
    log_file = open(root / "orthanc.log", "w")
    proc = subprocess.Popen([_binary(), str(root / "orthanc.json")], stdout=log_file, stderr=subprocess.STDOUT,
                            cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {proc.returncode}: "
                                   f"{(root / 'orthanc.log').read_text()[-800:]}")
            try:
                if requests.get(f"{url}/system", auth=("medgen", password), timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.2)
        yield OrthancServer(url, f"{url}/dicom-web", "medgen", password)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        shutil.rmtree(root, ignore_errors=True)


def upload_folder(server: OrthancServer, folder: str | Path) -> list[str]:
    """Store every ``*.dcm`` of ``folder`` through Orthanc's REST API; returns the Orthanc instance ids."""
    import requests
    ids = []
    for path in sorted(Path(folder).glob("*.dcm")):
        r = requests.post(f"{server.url}/instances", data=path.read_bytes(), auth=(server.user, server.password),
                          timeout=30)
        r.raise_for_status()
        ids.append(r.json()["ID"])
    return ids
