"""CITATION.cff: the fields GitHub's "Cite this repository" and cffconvert read, in step with the package."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import yaml

import cxrpipe

ROOT = Path(__file__).resolve().parents[1]


def test_citation_names_the_version_date_licence_and_the_methods_report():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    for key in ("message", "title", "authors", "version", "date-released", "license", "abstract"):
        assert cff.get(key), key
    assert cff["version"] == cxrpipe.__version__  # bumped together
    datetime.date.fromisoformat(str(cff["date-released"]))
    licence = re.search(r'license = \{ text = "([^"]+)" \}', (ROOT / "pyproject.toml").read_text()).group(1)
    assert cff["license"] == licence == "MIT" and (ROOT / "LICENSE").exists()
    report = cff["references"][0]
    assert report["title"] == "Multi-Modal Integration in Medical Imaging" and len(report["authors"]) == 4
    assert "0.7235" in report["notes"]  # the report's own MIMIC-CXR result, for comparison


def test_version_option_prints_the_package_version():
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"cxrpipe {cxrpipe.__version__}"


def test_help_has_no_rich_type_column():
    """Typer's rich help printed `<bool>` beside every flag (`--resume --no-resume <bool>`)."""
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    for args in (["--help"], ["pretrain", "--help"], ["launch", "--help"], ["verify", "--help"]):
        out = CliRunner().invoke(app, args).output
        assert "<bool>" not in out, args
    assert "--resume / --no-resume" in CliRunner().invoke(app, ["pretrain", "--help"]).output
