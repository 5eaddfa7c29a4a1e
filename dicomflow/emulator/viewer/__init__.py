"""The local cloud's OHIF viewer: the prebuilt OHIF v3 app behind a same-origin gateway that signs people in
and proxies read-only DICOMweb to the PACS with server-side credentials."""
