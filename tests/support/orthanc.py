"""A real PACS for the tests: Debian's Orthanc (1.10) on loopback with a generated configuration.

`orthanc(tmp_path, cxr_port=...)` writes the configuration a hospital would (the DICOMweb plugin,
cxr-fhir registered as a DICOM modality, a Lua routing rule that forwards every chest film to it),
starts ``/usr/sbin/Orthanc`` with its log in a file, waits for ``/system`` and stops it at exit.
`Orthanc.stop()` / `start()` take it down and bring it back on the same ports and storage (the
PACS-down test). Nothing reaches beyond loopback: no peers, no DICOMweb servers, no proxy, remote
access off, and the REST API (no authentication) answers on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .server import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

# The routing rule: every film stored with Modality DX or CR goes on to cxr-fhir. What cxr-fhir
# sends back (SR, Secondary Capture "OT", presentation states "PR") is not routed, so there is no
# loop; a Secondary Capture is never routed whatever Modality it claims. SendToModality queues an
# Orthanc job: storing never waits for the forward.
ROUTING_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  local secondaryCapture = tags['SOPClassUID'] == '1.2.840.10008.5.1.4.1.1.7'
  if (modality == 'DX' or modality == 'CR') and not secondaryCapture then
    SendToModality(instanceId, 'cxr')
  end
end
"""

SR_STORAGE = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22",
              "1.2.840.10008.5.1.4.1.1.88.11"}  # Comprehensive 3D, Comprehensive, Enhanced, Basic Text SR
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def available() -> str | None:
    """Why the PACS cannot run here (for a skip), or None."""
    if not Path(ORTHANC).exists():
        return f"Orthanc not installed ({ORTHANC}; Debian package orthanc)"
    if not Path(DICOMWEB_PLUGIN).exists():
        return f"Orthanc DICOMweb plugin not installed ({DICOMWEB_PLUGIN}; Debian package orthanc-dicomweb)"
    if not shutil.which("storescu"):
        return "dcmtk storescu not installed (Debian package dcmtk)"
    return None


def configuration(root: Path, http_port: int, dicom_port: int, cxr_ae: str, cxr_port: int,
                  route_to_cxr: bool) -> dict[str, Any]:
    """The Orthanc configuration (Debian 1.10 keys, see /etc/orthanc/orthanc.json)."""
    lua = root / "route-chest-films.lua"
    lua.write_text(ROUTING_LUA)
    return {
        "Name": "cxr-fhir-test-pacs",
        "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,  # loopback only (RemoteAccessAllowed false)
        "SslEnabled": False, "WebDavEnabled": False, "OrthancExplorerEnabled": False,
        "HttpProxy": "", "OrthancPeers": {}, "OrthancPeersInDatabase": False,
        "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],  # uncompressed, deflated, JPEG, JPEG-LS, J2K, RLE
        # The modality's port is never dialled (it only stores into Orthanc): any valid number does.
        "DicomModalities": {"cxr": [cxr_ae, "127.0.0.1", cxr_port], "modality": ["MODALITY", "127.0.0.1", 104]},
        "DicomModalitiesInDatabase": False, "DicomScuTimeout": 10,
        "LuaScripts": [str(lua)] if route_to_cxr else [],
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Servers": {}},
        "SaveJobs": False, "ConcurrentJobs": 2, "StableAge": 60, "OverwriteInstances": False,
        "MetricsEnabled": False, "DeidentifyLogs": True,
    }


@dataclass
class Orthanc:
    """A running Orthanc: its ports, REST helpers, and stop/start on the same ports and storage."""

    root: Path
    http_port: int
    dicom_port: int
    config_path: Path
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    aet: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, within_s: float = 30) -> None:
        assert self.proc is None, "already running"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.root)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {within_s} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # --- REST helpers -------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        ids: list[str] = self.get("/instances")
        return ids

    def tags(self, instance_id: str) -> dict[str, Any]:
        tags: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return tags

    def file(self, instance_id: str) -> bytes:
        r = httpx.get(f"{self.url}/instances/{instance_id}/file", timeout=60)
        r.raise_for_status()
        return r.content

    def find(self, level: str = "Instance", **query: str) -> list[str]:
        """Orthanc ids matching the DICOM tags given (tag keywords, wildcards allowed)."""
        r = httpx.post(f"{self.url}/tools/find", json={"Level": level, "Query": query, "Expand": False}, timeout=30)
        r.raise_for_status()
        found: list[str] = r.json()
        return found

    def by_sop_instance_uid(self, uid: str) -> list[str]:
        return self.find(SOPInstanceUID=uid)

    def count_by_sop_class(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in self.instances():
            cls = self.tags(i).get("SOPClassUID", "")
            counts[cls] = counts.get(cls, 0) + 1
        return counts

    def modalities_by_study(self) -> dict[str, dict[str, int]]:
        """StudyInstanceUID -> {series Modality: instances}, for everything stored, in two requests
        (cheap enough to poll while the server under test shares the CPU)."""
        studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in self.get("/studies?expand")}
        out: dict[str, dict[str, int]] = {uid: {} for uid in studies.values()}
        for series in self.get("/series?expand"):
            counts = out.setdefault(studies.get(series["ParentStudy"], "?"), {})
            modality = series["MainDicomTags"].get("Modality", "")
            counts[modality] = counts.get(modality, 0) + len(series["Instances"])
        return out

    def sop_instance_uids(self, sop_classes: set[str] | None = None) -> list[str]:
        """The SOP Instance UID of every instance stored (of the classes given), repeats kept."""
        out = []
        for i in self.instances():
            t = self.tags(i)
            if sop_classes is None or t.get("SOPClassUID") in sop_classes:
                out.append(t["SOPInstanceUID"])
        return out


@contextmanager
def orthanc(tmp_path: Path, *, cxr_ae: str = "CXRFHIR", cxr_port: int | None = None,
            route_to_cxr: bool = True) -> Iterator[Orthanc]:
    """A started Orthanc under ``tmp_path/orthanc`` that routes chest films to cxr-fhir at
    ``cxr_ae``@127.0.0.1:``cxr_port``; stopped (terminate, then kill) at exit."""
    root = tmp_path / "orthanc"
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = configuration(root, http_port, dicom_port, cxr_ae, cxr_port or free_port(), route_to_cxr)
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    pacs = Orthanc(root, http_port, dicom_port, config_path, root / "orthanc.log")
    pacs.start()
    try:
        yield pacs
    finally:
        pacs.stop()
