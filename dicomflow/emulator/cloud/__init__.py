"""The process supervisor: Orthanc and the moto server as services that ``dicomflow up`` starts, ``status``
checks and ``down`` stops."""
