"""The spec reference: every setting the loader accepts, and docs/spec-reference.md is its text."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from dagster_project.check.reference import spec_reference
from dagster_project.cli import main
from dagster_project.spec import StreamSpec

DOC = Path(__file__).resolve().parents[3] / "docs" / "spec-reference.md"


def test_every_setting_of_every_section_is_listed_with_its_default() -> None:
    text = spec_reference()
    for name in StreamSpec.model_fields:
        assert f"| `{name}` |" in text
    for section, setting, default in [
        ("batch", "max_wait_s", None),
        ("quality", "allow_partial", "`False`"),
        ("quality", "policy", "`'halt'`"),
        ("features[]", "categories", "`None`"),
        ("model.scale_out", None, None),
    ]:
        body = text.split(f"## `{section}`\n", 1)[1].split("\n## ", 1)[0]
        if setting is not None:
            (row,) = [line for line in body.splitlines() if line.startswith(f"| `{setting}` |")]
            assert default is None or row.endswith(f"| {default} |"), row
    assert "Annotated[" not in text and "Union[" not in text and "object at" not in text


def test_the_checked_in_reference_is_the_generated_one() -> None:
    """docs/spec-reference.md is what `streamfit check --reference` prints; regenerate it with that
    command when a spec setting changes."""
    printed = CliRunner().invoke(main, ["check", "--reference"])
    assert printed.exit_code == 0 and printed.output == spec_reference()
    assert DOC.read_text() == printed.output, "run `streamfit check --reference > docs/spec-reference.md`"
    assert len(re.findall(r"^## ", printed.output, flags=re.M)) >= 12
