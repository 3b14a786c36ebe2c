"""The documentation's links and named files exist, and the published result files parse.

Cheap checks that catch a renamed script or a results file that was never committed."""
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Files named in the text or in commands: under a project folder, or a published result
# under docs/results/ (`extra/...`).
NAMED = re.compile(r"(?<![\w./$-])((?:bench|configs|dynabert_jax|tests|docs|extra)/[\w./-]*\w\.(?:py|json|md|png|sh))")


def _targets(doc):
    text = doc.read_text()
    for link in LINK.findall(text):
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        yield link, doc.parent / link.split("#")[0]
    for name in NAMED.findall(text):
        base = ROOT / "docs" / "results" if name.startswith("extra/") else ROOT
        yield name, base / name


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_named_files_exist(doc):
    missing = [name for name, path in _targets(doc) if not path.exists()]
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"


def test_published_results_parse():
    files = sorted((ROOT / "docs" / "results").rglob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        assert isinstance(record, dict), path
