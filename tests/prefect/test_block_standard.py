"""Prefect's own standard checks for a collection's block: description, docs URL, field docs, code example."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from prefect_tasks import FedMLStorage


class TestFedMLStorageBlock(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[FedMLStorage]:
        return FedMLStorage
