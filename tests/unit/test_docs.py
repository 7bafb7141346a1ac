"""The operator docs stay true to the code they describe."""

from __future__ import annotations

from app.cli import settings_table
from tests.conftest import ROOT


def test_configuration_doc_lists_every_setting() -> None:
    """docs/configuration.md holds exactly what `kueue-tes settings` prints."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    start = text.index("<!-- generated: kueue-tes settings -->\n") + len(
        "<!-- generated: kueue-tes settings -->\n"
    )
    end = text.index("<!-- end generated -->")
    assert text[start:end] == settings_table(), "run: kueue-tes settings, and paste it in"
