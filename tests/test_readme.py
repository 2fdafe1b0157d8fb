"""The README's tables that come from code are the code's, word for word."""

from __future__ import annotations

from nbp.outputs.manifest import manifest_doc_markdown
from tests.conftest import ROOT


def test_the_readme_manifest_table_is_the_manifest_row() -> None:
    assert manifest_doc_markdown() in (ROOT / "README.md").read_text()
