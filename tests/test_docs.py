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


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped,
    spaces to hyphens; a repeated heading gets -1, -2, ..."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(doc):
    seen, anchors = {}, set()
    in_code = False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            base = _slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            anchors.add(base if n == 0 else f"{base}-{n}")
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_anchors_name_headings(doc):
    # A link to a section (`#anchor` or `other.md#anchor`) must land on a heading.
    broken = []
    for link in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", link) or "#" not in link:
            continue
        file, anchor = link.split("#", 1)
        target = doc.parent / file if file else doc
        if target.suffix == ".md" and target.exists() and anchor not in _anchors(target):
            broken.append(link)
    assert not broken, f"{doc.relative_to(ROOT)} links to sections that do not exist: {broken}"


def test_published_results_parse():
    files = sorted((ROOT / "docs" / "results").rglob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        assert isinstance(record, dict), path


def test_results_page_is_rendered_from_its_records():
    # docs/results.md's tables are docs/results/<task>.json rendered, targets included
    # (records that kept targets rounded to two decimals rendered three gaps 0.1 off):
    # `python -m dynabert_jax.results --records docs/results` publishes the same page.
    from dynabert_jax import results
    records = [json.loads(p.read_text()) for p in
               sorted((ROOT / "docs" / "results").glob("*.json"),
                      key=lambda p: results.TASK_ORDER.index(p.stem))]
    assert [r["task"] for r in records] == ["sst2", "mrpc", "rte", "stsb", "cola"]
    for r in records:
        assert r["targets"] == results.targets(r), r["task"]
    page = (ROOT / "docs" / "results.md").read_text()
    published = results.BEGIN + page.split(results.BEGIN, 1)[1].split(results.END, 1)[0] \
        + results.END
    assert published == results.render(records, {r["task"]: f"results/{r['task']}.png"
                                                 for r in records})


# Dev-set sizes of the accuracy tasks in docs/results.md (all of each dev set is used).
DEV_PAIRS = {"RTE": 277, "MRPC": 408, "SST-2": 872}
SEED_LIST = re.compile(r"^\d+\.\d( / \d+\.\d)+( \(\d+\.\d\))?$")   # "55.6 / 57.4 (56.5)"


def _seed_lists(text):
    """``(task, line, value)`` for each per-seed accuracy in a results table, where the
    column's header or else the section names exactly one of DEV_PAIRS' tasks."""
    section, header = "", []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(("**", "#")):
            section = line
        elif line.startswith(("| cell", "| task")):
            header = line.split(" | ")
        elif line.startswith("| (") and len(cols := line.split(" | ")) == len(header):
            for head, col in zip(header, cols):
                if not SEED_LIST.match(col):
                    continue
                tasks = [t for t in DEV_PAIRS if t in head]
                if not tasks and not any(t in section for t in ("CoLA", "STS-B")):
                    tasks = [t for t in DEV_PAIRS if t in section]
                if len(tasks) == 1:
                    for value in re.sub(r" \(.*\)$", "", col).split(" / "):
                        yield tasks[0], n, value


def test_per_seed_accuracies_are_whole_dev_examples():
    # An accuracy on N dev examples is k/N; shown to one decimal it is one of N+1
    # strings. A value rounded twice (76.9495 -> 76.95 -> 77.0) is none of them.
    shown = {t: {f"{100 * k / n:.1f}" for k in range(n + 1)} for t, n in DEV_PAIRS.items()}
    found = list(_seed_lists((ROOT / "docs" / "results.md").read_text()))
    assert len(found) > 300, len(found)   # the tables are still found
    bad = [(t, n, v) for t, n, v in found if v not in shown[t]]
    assert not bad, f"not a whole number of dev examples (task, line, value): {bad}"


def test_gpu_parts_named_in_docs_exist():
    # `bash bench/gpu.sh OUT PART` in the docs, and the parts `lease` runs, must be parts
    # of the script: a renamed part would only show on a GPU lease, too late to fix.
    script = (ROOT / "bench" / "gpu.sh").read_text()
    parts = set(re.findall(r"^  ([a-z0-9-]+)\)", script, re.M))
    assert {"lease", "results", "latency-minilm"} <= parts
    named = {m for doc in DOCS
             for m in re.findall(r"gpu\.sh +\$?[A-Z]+ +([a-z0-9-]+)", doc.read_text())}
    (lease,) = re.findall(r"for p in (.*?); do", script, re.S)
    named |= {p.split(":")[0] for p in lease.replace("\\", " ").split()}
    assert named and not named - parts, f"not parts of bench/gpu.sh: {named - parts}"
