"""The training channel's layout, shared by dataset export (which writes it) and the training job (which reads it).

A channel is an S3 prefix (``SM_CHANNEL_TRAIN`` once SageMaker has downloaded it) holding:

* ``manifest.jsonl`` - one line per example: ``{"id", "patient", "images": [paths], "labels": [names]}``
  (classification) or ``{"id", "patient", "images": [paths], "label": path}`` (segmentation), paths
  relative to the channel root;
* ``classes.json`` - the class names (the label set, or the structures of a segmentation);
* the staged DICOM files (and label volumes) the lines name.
"""

from __future__ import annotations

MANIFEST = "manifest.jsonl"
CLASSES = "classes.json"


def channel_uri(channel: str, name: str) -> str:
    """``s3://bucket/prefix/<name>`` inside the channel ``s3://bucket/prefix[/]``."""
    return channel.rstrip("/") + "/" + name
