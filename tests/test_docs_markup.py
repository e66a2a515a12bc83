"""Every reStructuredText file of the project reads without a warning: a malformed
table or a broken link target renders as an error box in the published docs."""

from __future__ import annotations

import io

import pytest
from docutils.core import publish_doctree

from .conftest import REPO

DOCUMENTS = sorted([REPO / "README.rst", *(REPO / "docs").glob("*.rst")])


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_the_markup_reads_without_warnings(path):
    problems = io.StringIO()
    publish_doctree(
        path.read_text(),
        source_path=str(path),
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": problems},
    )
    assert problems.getvalue() == ""
