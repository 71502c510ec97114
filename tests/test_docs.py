"""The authoring guide stays in step with the code it documents."""

import re
from pathlib import Path

from otrules import defaults
from otrules.engine import FACTS

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "authoring.md"


def test_the_facts_table_lists_exactly_the_engine_facts():
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| (number|text|yes/no) \|", GUIDE.read_text(), re.MULTILINE)
    assert [name for name, _ in rows] == list(FACTS)
    kinds = {"number": "number", "string": "text", "bool": "yes/no"}
    assert all(kinds[FACTS[name].type] == kind for name, kind in rows)


def test_every_default_rule_is_explained_with_its_condition():
    text = GUIDE.read_text()
    for rule in defaults.rulesets()[0].rules:
        assert f"| `{rule.id}` → {rule.recommend.kind}, {rule.recommend.indicator} | `{rule.condition_text}` |" in text


def test_readme_links_the_guide():
    assert "docs/authoring.md" in (GUIDE.parent.parent / "README.md").read_text()


def test_figures_quoted_outside_benchmarks_md_come_from_it():
    """A figure is measured in one place (docs/benchmarks.md); README and operations.md quote it."""
    root = GUIDE.parent.parent
    source = (root / "docs" / "benchmarks.md").read_text()
    figure = re.compile(r"[0-9][0-9,.]* events/s|(?:median|p99) [0-9]+ ms|[0-9.]+x (?:a|the) (?:plain|rate|public)")
    for doc in (root / "README.md", root / "docs" / "operations.md"):
        quoted = figure.findall(doc.read_text())
        assert quoted, f"{doc.name} quotes no figure: the pattern is stale"
        missing = [f for f in quoted if f.split(" ")[0] + " " not in source and f not in source]
        assert not missing, f"{doc.name} quotes figures that docs/benchmarks.md does not give: {missing}"
