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
