"""The scripted OpenSearch client both OpenSearch contract suites use."""

from __future__ import annotations

import pytest
from opensearch_script import Scripted
from opensearchpy import OpenSearch


@pytest.fixture
def client():
    Scripted.script, Scripted.sent = [], []
    yield OpenSearch(hosts=["https://search.example:443"], connection_class=Scripted)
    assert Scripted.script == [], "every scripted answer was asked for"
