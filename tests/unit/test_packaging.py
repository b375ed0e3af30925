"""The package's licence metadata in the form setuptools keeps accepting (PEP 639), and the licence itself."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_license_is_an_spdx_expression_with_its_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # the table form stops building after 2027-02-18
    assert project["project"]["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", ()))
    # Both keys need setuptools 77; an older one in an isolated build would refuse the string form.
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_license_file_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) == 11358
