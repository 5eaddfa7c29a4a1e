"""What one search API process reads: the configured report and image indexes, opened once per thread and
kept fresh, and the signer of thumbnail links.

Indexes are those of :func:`dicomflow.search.report_index.open_report_index` and
:func:`dicomflow.search.images.open_image_index`: OpenSearch when ``DICOMFLOW_SEARCH_OPENSEARCH_URL`` is set
(the AppSync Lambda on AWS), else the embedded files given here (the local cloud's data dir). An index that
does not exist yet is ``None`` in the :class:`~dicomflow.api.resolvers.Context` and is looked for again on
the next request. Thumbnails (``s3://`` URIs in the image index) become presigned GET links valid for
:data:`LINK_SECONDS`; the bucket is never public.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomflow import aws
from dicomflow.api.auth import User
from dicomflow.api.resolvers import Context
from dicomflow.config import runtime
from dicomflow.errors import DicomflowError
from dicomflow.search.images import open_image_index
from dicomflow.search.report_index import open_report_index

#: How long a thumbnail link works: long enough to draw a page, short enough not to outlive it.
LINK_SECONDS = 300


def sign_thumbnail(uri: str, s3: Any = None) -> str | None:
    """A presigned GET link to an ``s3://`` thumbnail, valid :data:`LINK_SECONDS`; None for anything else."""
    try:
        aws.parse_s3_uri(uri)
    except ValueError:
        return None
    return aws.presigned_get(uri, LINK_SECONDS, s3)


class Engine:
    """Makes each request's :class:`Context`; safe to share between threads (each has its own indexes)."""

    def __init__(self, reports_path: Path | None, images_dir: Path | None,
                 viewer: Callable[[str, str], str | None] | None = None) -> None:
        self.reports_path, self.images_dir = reports_path, images_dir
        self.viewer = viewer  # (username, study) -> a viewer sign-in link (the local cloud's viewer)
        self._local = threading.local()

    @classmethod
    def from_runtime(cls) -> Engine:
        """The indexes the runtime settings name (``DICOMFLOW_SEARCH_REPORTS_INDEX``, ``DICOMFLOW_SEARCH_INDEX_DIR``,
        or the OpenSearch domain)."""
        settings = runtime()
        return cls(Path(settings.search_reports_index) if settings.search_reports_index else None,
                   Path(settings.search_index_dir) if settings.search_index_dir else None)

    def _open(self, name: str, opener: Any, where: Path | None) -> Any | None:
        ix = getattr(self._local, name, None)
        if ix is not None:
            ix.refresh()
            return ix
        if where is None and not runtime().search_opensearch_url:
            return None
        try:
            ix = opener(where)
        except DicomflowError:  # not built yet
            return None
        setattr(self._local, name, ix)
        return ix

    def context(self, user: User) -> Context:
        if getattr(self._local, "s3", None) is None:  # SigV4 links (X-Amz-Expires), as every region takes
            self._local.s3 = aws.client("s3", config=aws.SIGV4)
        s3 = self._local.s3
        return Context(user=user,
                       reports=self._open("reports", lambda p: open_report_index(p, create=False), self.reports_path),
                       images=self._open("images", open_image_index, self.images_dir),
                       sign=lambda uri: sign_thumbnail(uri, s3),
                       **({"viewer": self.viewer} if self.viewer is not None else {}))
