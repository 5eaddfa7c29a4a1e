"""The local PACS: Debian's Orthanc with the DICOMweb plugin, started as a plain process.

Generated config: authentication on with a generated password (``secrets/orthanc.json``, 0600),
``RemoteAccessAllowed: false``, DICOMweb at ``/dicom-web/`` with ``DicomWeb.Host`` set, WADO-URI at
``/wado``, HTTP compression off (it makes single-instance answers ~40x slower), storage in the
data dir. The config file holds the password too, so it is 0600 as well.
"""

from __future__ import annotations

import json

import requests

from dicomflow.config import generate_password, read_secret_file, write_secret_file
from dicomflow.credentials import local_orthanc_secret_path
from dicomflow.emulator.cloud.service import Service, ServiceError, require_executable
from dicomflow.paths import private_dir, restrict_tree

ORTHANC_BIN = "/usr/sbin/Orthanc"
PLUGIN_DIR = "/usr/share/orthanc/plugins"
DICOMWEB_PLUGIN = f"{PLUGIN_DIR}/libOrthancDicomWeb.so"
USERNAME = "dicomflow"


#: The local Orthanc's own AE title (the called AE title of a modality sending to it).
AE_TITLE = "DICOMFLOW"

class OrthancService(Service):
    name = "orthanc"

    @property
    def url(self) -> str:
        return self.settings.orthanc_url

    @property
    def dir(self):
        return self.settings.data_dir / "orthanc"

    @property
    def config_path(self):
        return self.dir / "orthanc.json"

    def ports(self) -> list[int]:
        return [self.settings.orthanc_http_port, self.settings.orthanc_dicom_port]

    def check_prerequisites(self) -> None:
        require_executable(ORTHANC_BIN, "orthanc")
        import os

        if not os.path.exists(DICOMWEB_PLUGIN):
            raise ServiceError(f"{DICOMWEB_PLUGIN} not found; install the Debian package 'orthanc-dicomweb'")

    def credentials(self) -> tuple[str, str]:
        """The generated Orthanc user, created on first use and kept across restarts."""
        path = local_orthanc_secret_path(self.settings.data_dir)
        if not path.exists():
            write_secret_file(path, {"username": USERNAME, "password": generate_password()})
        creds = read_secret_file(path)
        return creds["username"], creds["password"]

    def prepare(self) -> None:
        user, password = self.credentials()
        storage = private_dir(self.dir / "storage")
        private_dir(self.dir / "logs")
        restrict_tree(self.dir)  # PHI: storage from before this rule may be 0755/0644
        s = self.settings
        config = {
            "Name": "dicomflow",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": s.orthanc_http_port,
            "DicomPort": s.orthanc_dicom_port,
            "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {user: password},
            "HttpCompressionEnabled": False,
            "HttpsVerifyPeers": True,
            "DicomCheckCalledAet": True,
            # DIMSE from a modality: only this calling AE title, only from this machine, only echo and store
            "DicomModalities": {"modality": {
                "AET": s.modality_aet, "Host": "127.0.0.1", "Port": 104, "AllowEcho": True, "AllowStore": True,
                "AllowFind": False, "AllowMove": False, "AllowGet": False, "AllowStorageCommitment": False}},
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomCheckModalityHost": True,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "StableAge": 2,
            "OverwriteInstances": False,
            "SaveJobs": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Host": f"{s.host}:{s.orthanc_http_port}",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        write_secret_file(self.config_path, config)

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        return [ORTHANC_BIN, f"--logdir={self.dir / 'logs'}", str(self.config_path)], None

    def healthy(self) -> bool:
        try:
            r = requests.get(f"{self.url}/system", auth=self.credentials(), timeout=2)
        except requests.RequestException:
            return False
        if r.status_code != 200:
            return False
        try:
            return "Version" in r.json()
        except ValueError:
            return False

    def version(self) -> str:
        r = requests.get(f"{self.url}/system", auth=self.credentials(), timeout=5)
        return json.loads(r.text)["Version"]
