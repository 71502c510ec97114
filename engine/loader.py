"""Load and validate rules files and the instrument catalogue.

Every error in a file is reported in one pass, each as
`file:line:col: rule <id>: message` with a hint where one helps; a file with
any error is rejected whole. YAML is read with ruamel so that errors point at
the line a clinical lead has to change.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from otrules.engine.conditions import (
    And,
    Compare,
    ConditionError,
    Const,
    Fact,
    In,
    Node,
    Not,
    Or,
    check,
    facts_named,
    parse,
    to_text,
    unknown_fact_hint,
    walk,
)
from otrules.engine.facts import FACTS
from otrules.schemas import Catalogue, Recommend, RuleSpec, RulesetFile, Throttle
from otrules.schemas._errors import field_path, show_value

SUMMARY_MAX = 140
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in a rules file, pointing at a line and column (1-based)."""

    file: str
    line: int
    col: int
    message: str
    rule_id: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}: "
        rule = f"rule {self.rule_id}: " if self.rule_id else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}{rule}{self.message}{hint}"


class RulesetError(ValueError):
    """A rules file (or several) that cannot be used; `problems` lists every error."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Rule:
    """One checked rule: immutable, with its condition parsed and typed."""

    id: str
    description: str | None
    condition: Node
    condition_text: str
    facts: tuple[str, ...]  # named by the condition, in order of first appearance
    evidence_facts: tuple[str, ...]  # the condition's facts, then those the texts name
    per_measure: bool
    per_goal: bool  # names goal.* but no measure.*: checked once per goal when time advances
    recommend: Recommend
    throttle: Throttle | None
    references: tuple[str, ...]
    line: int
    enabled: bool = True
    when_at: tuple[int, int] = (1, 1)  # line and column where a one-line condition's text starts


@dataclass(frozen=True, slots=True)
class CompiledRuleset:
    name: str
    version: str
    description: str | None
    digest: str
    source: str
    rules: tuple[Rule, ...]
    spec: RulesetFile = field(repr=False)
    instrument_at: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # override -> line, col

    @property
    def label(self) -> str:
        return f"otrules {self.name} {self.version}"


# ---------------------------------------------------------------- public API


def load_catalogue(path: str | Path) -> Catalogue:
    """Read and validate an instrument catalogue file."""
    path = Path(path)
    data, problems = _read_yaml(path)
    if problems:
        raise RulesetError(problems)
    try:
        return Catalogue.model_validate(data)
    except ValidationError as exc:
        raise RulesetError(_pydantic_problems(str(path), data, exc)) from None


def load_ruleset(path: str | Path) -> CompiledRuleset:
    """Read, validate and type-check one rules file."""
    path = Path(path)
    return parse_ruleset_text(path.read_text(encoding="utf-8"), str(path))


def parse_ruleset_text(text: str, filename: str = "<rules>") -> CompiledRuleset:
    data, problems = _parse_yaml(text, filename)
    if problems:
        raise RulesetError(problems)
    try:
        spec = RulesetFile.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(filename, data, exc)
        problems += _condition_problems_raw(filename, data)
        raise RulesetError(_dedupe(problems)) from None
    rules: list[Rule] = []
    problems = []
    seen: dict[str, int] = {}
    for index, rule_spec in enumerate(spec.rules):
        node = data["rules"][index]
        line, col = _pos(node, None)
        if rule_spec.id in seen:
            problems.append(Problem(filename, *_pos(node, "id"), f"duplicate rule id (first at line {seen[rule_spec.id]})", rule_spec.id))
            continue
        seen[rule_spec.id] = line
        try:
            rules.append(_build_rule(rule_spec, node, filename, line))
        except _RuleProblems as bad:
            problems.extend(bad.problems)
    if problems:
        raise RulesetError(problems)
    return CompiledRuleset(
        name=spec.ruleset,
        version=spec.version,
        description=spec.description,
        digest=_digest(spec),
        source=filename,
        rules=tuple(r for r in rules),
        spec=spec,
        instrument_at={iid: _pos(data.get("instruments"), iid) for iid in spec.instruments},
    )


def load_rulesets(paths: Iterable[str | Path]) -> list[CompiledRuleset]:
    """Rules files and folders (every *.yaml in a folder that has `ruleset:`)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(f for f in sorted(p.glob("*.y*ml")) if _looks_like_ruleset(f))
        else:
            files.append(p)
    if not files:
        raise RulesetError([Problem(", ".join(map(str, paths)) or "(none)", 1, 1, "no rules files found")])
    problems: list[Problem] = []
    loaded: list[CompiledRuleset] = []
    for f in files:
        try:
            loaded.append(load_ruleset(f))
        except RulesetError as exc:
            problems.extend(exc.problems)
        except OSError as exc:
            problems.append(Problem(str(f), 1, 1, f"cannot read the file: {exc.strerror}"))
    names: dict[str, str] = {}
    for rs in loaded:
        if rs.name in names:
            problems.append(Problem(rs.source, 1, 1, f"ruleset {rs.name!r} is also defined in {names[rs.name]}"))
        names.setdefault(rs.name, rs.source)
    if problems:
        raise RulesetError(problems)
    return loaded


# ---------------------------------------------------------------- rule building


class _RuleProblems(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems


def _build_rule(spec: RuleSpec, node: Any, filename: str, line: int) -> Rule:
    problems: list[Problem] = []
    condition = None
    try:
        condition = _condition(spec.when, node.get("when"), node, filename, spec.id)
    except _RuleProblems as bad:
        problems.extend(bad.problems)
    names = facts_named(condition) if condition is not None else []
    template_facts = _template_problems(spec, node, filename, problems)
    if problems:
        raise _RuleProblems(problems)
    assert condition is not None
    named = [*names, *template_facts]
    per_measure = any(FACTS[n].per_measure for n in named)
    per_goal = any(n.startswith("goal.") for n in named) and not any(n.startswith("measure.") for n in named)
    return Rule(
        id=spec.id,
        description=spec.description,
        condition=condition,
        condition_text=spec.when if isinstance(spec.when, str) else to_text(condition),
        facts=tuple(names),
        evidence_facts=tuple(dict.fromkeys([*names, *template_facts])),
        per_measure=per_measure,
        per_goal=per_goal,
        recommend=spec.recommend,
        throttle=spec.throttle,
        references=tuple(spec.references),
        line=line,
        enabled=spec.enabled,
        when_at=_when_at(node),
    )


def _condition(when: Any, raw: Any, parent: Any, filename: str, rule_id: str, key: Any = "when") -> Node:
    """Parse `when`, a string or {all|any|not: ...}; positions from the YAML."""
    if isinstance(when, str):
        line, col = _pos(parent, key)
        col += _scalar_offset(raw)
        try:
            return check(parse(when))
        except ConditionError as err:
            at = col + (err.col - 1 if err.col else 0) if _is_plain_one_line(raw) else col
            raise _RuleProblems([Problem(filename, line, at, f"when: {err.message}", rule_id, err.hint)]) from None
    problems: list[Problem] = []
    items: list[Node] = []
    if hasattr(when, "all") or hasattr(when, "any"):
        word = "all" if hasattr(when, "all") else "any"
        for i, sub in enumerate(getattr(when, word)):
            try:
                items.append(_condition(sub, raw[word][i], raw[word], filename, rule_id, i))
            except _RuleProblems as bad:
                problems.extend(bad.problems)
        if problems:
            raise _RuleProblems(problems)
        return And(tuple(items)) if word == "all" else Or(tuple(items))
    return Not(_condition(when.not_, raw["not"], raw, filename, rule_id, "not"))


def _when_at(node: Any) -> tuple[int, int]:
    raw = node.get("when") if isinstance(node, dict) else None
    line, col = _pos(node, "when")
    return (line, col + _scalar_offset(raw)) if _is_plain_one_line(raw) else (line, col)


def instrument_problems(ruleset: CompiledRuleset, known: set[str]) -> list[Problem]:
    """Instrument ids in conditions and overrides that the catalogue does not know.

    `known` holds the catalogue's ids; a ruleset may define new instruments under
    `instruments:` (with min, max and better), which then count as known.
    """
    problems: list[Problem] = []
    defined = set(known)
    for iid, override in ruleset.spec.instruments.items():
        if iid in known:
            continue
        missing = [k for k in ("min", "max", "better") if getattr(override, k) is None]
        if missing:
            problems.append(Problem(ruleset.source, *ruleset.instrument_at.get(iid, (1, 1)),
                                    f"instruments.{iid}: not in the catalogue; a new instrument needs {', '.join(missing)}",
                                    None, _did_you_mean(iid, known)))
        else:
            defined.add(iid)
    for rule in ruleset.rules:
        for node in walk(rule.condition):
            for name, value, col in _instrument_literals(node):
                if value not in defined:
                    line, start = rule.when_at
                    problems.append(Problem(ruleset.source, line, start + col - 1,
                                            f"when: unknown instrument {value!r} compared with {name}", rule.id,
                                            _did_you_mean(value, defined) or "see rules/instruments.yaml for the ids"))
    return problems


def _instrument_literals(node: Node) -> list[tuple[str, str, int]]:
    if isinstance(node, Compare):
        pairs = [(node.left, node.right), (node.right, node.left)]
        return [(f.name, c.value, c.col or node.col) for f, c in pairs
                if isinstance(f, Fact) and f.name in _INSTRUMENT_FACTS and isinstance(c, Const) and isinstance(c.value, str)]
    if isinstance(node, In) and isinstance(node.operand, Fact) and node.operand.name in _INSTRUMENT_FACTS:
        return [(node.operand.name, v, node.col) for v in node.values if isinstance(v, str)]
    return []


_INSTRUMENT_FACTS = {"measure.instrument", "goal.instrument"}


def _did_you_mean(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def _template_problems(spec: RuleSpec, node: Any, filename: str, problems: list[Problem]) -> list[str]:
    """Check `{fact.name}` placeholders; return the facts they name."""
    named: list[str] = []
    recommend = node.get("recommend") if isinstance(node, dict) else None
    for key in ("summary", "detail"):
        text = getattr(spec.recommend, key)
        if not text:
            continue
        line, col = _pos(recommend, key)
        for m in _PLACEHOLDER.finditer(text):
            name = m.group(1).strip()
            if name not in FACTS:
                problems.append(Problem(filename, line, col, f"recommend.{key}: unknown fact {{{name}}}", spec.id,
                                        unknown_fact_hint(name)))
            else:
                named.append(name)
    estimate = _rendered_length(spec.recommend.summary)
    if estimate > SUMMARY_MAX:
        line, col = _pos(recommend, "summary")
        problems.append(Problem(filename, line, col,
                                f"recommend.summary can reach about {estimate} characters once filled in; at most {SUMMARY_MAX}",
                                spec.id, "shorten the text; longer summaries are cut with '…'"))
    return named


_TYPICAL_WIDTH = {"number": 6, "bool": 3, "string": 16}


def _rendered_length(template: str) -> int:
    """Length of a summary with each placeholder at a typical width for its type."""
    def width(m: re.Match[str]) -> str:
        info = FACTS.get(m.group(1).strip())
        return "x" * (_TYPICAL_WIDTH[info.type] if info else len(m.group(0)))
    return len(_PLACEHOLDER.sub(width, template))


# ---------------------------------------------------------------- YAML and errors


def _read_yaml(path: Path) -> tuple[Any, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [Problem(str(path), 1, 1, f"cannot read the file: {exc.strerror}")]
    return _parse_yaml(text, str(path))


def _parse_yaml(text: str, filename: str) -> tuple[Any, list[Problem]]:
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(filename, line, col, f"not valid YAML: {exc.problem or exc.context}")]
    if not isinstance(data, dict):
        return None, [Problem(filename, 1, 1, "a rules file is a mapping with ruleset, version and rules")]
    return data, []


def _pos(node: Any, key: Any) -> tuple[int, int]:
    """1-based (line, column) of `key` in a ruamel node (of the node itself if key is None)."""
    try:
        if key is None:
            return node.lc.line + 1, node.lc.col + 1
        if isinstance(node, CommentedMap):
            if key in node:
                line, col = node.lc.value(key) if not isinstance(node[key], (CommentedMap, CommentedSeq)) else node.lc.key(key)
                return line + 1, col + 1
            return node.lc.line + 1, node.lc.col + 1
        if isinstance(node, CommentedSeq):
            line, col = node.lc.item(key)
            return line + 1, col + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        pass
    return 1, 1


def _scalar_offset(raw: Any) -> int:
    """Quoted scalars start one column before their text."""
    style = getattr(raw, "style", None)
    return 1 if style in ('"', "'") else 0


def _is_plain_one_line(raw: Any) -> bool:
    return isinstance(raw, str) and "\n" not in raw and getattr(raw, "style", None) not in ("|", ">")


def _pydantic_problems(filename: str, data: Any, exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        node, parent, last = data, None, None
        for part in loc:
            if isinstance(node, (dict, list)):
                try:
                    parent, last, node = node, part, node[part]
                except (KeyError, IndexError, TypeError):
                    break
        line, col = _pos(parent, last) if parent is not None else (1, 1)
        if err["type"] == "missing":
            line, col = _pos(parent if last != loc[-1] else node, None) if parent is not None else (1, 1)
            if isinstance(node, dict):
                line, col = _pos(node, None)
        rule_id = None
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            try:
                rule_id = data["rules"][loc[1]].get("id")
            except (AttributeError, IndexError, KeyError, TypeError):
                rule_id = None
        path = field_path(_drop_union_noise(loc[2:] if rule_id else loc))
        message, hint = _message(err)
        problems.append(Problem(filename, line, col, f"{path}: {message}", rule_id, hint))
    return problems


def _condition_problems_raw(filename: str, data: Any) -> list[Problem]:
    """Condition errors in rules that pydantic rejected for other reasons, so one pass shows all."""
    problems: list[Problem] = []
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return problems
    for node in rules:
        if not isinstance(node, dict) or not isinstance(node.get("when"), str):
            continue
        try:
            _condition(node["when"], node["when"], node, filename, str(node.get("id")))
        except _RuleProblems as bad:
            problems.extend(bad.problems)
    return problems


def _drop_union_noise(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    noise = {"str", "WhenAll", "WhenAny", "WhenNot", "function-after[_is_duration(), str]"}
    return tuple(p for p in loc if p not in noise)


def _message(err: dict[str, Any]) -> tuple[str, str | None]:
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return "required field is missing", None
    if kind == "extra_forbidden":
        return f"unknown field (value {show_value(value)})", "check the spelling; see the rules-file JSON Schema"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{show_value(value)} is not allowed; expected {expected}", None
    return f"{err['msg']} (got {show_value(value)})", None


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return sorted(out, key=lambda p: (p.line, p.col))


def _digest(spec: RulesetFile) -> str:
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _looks_like_ruleset(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8")[:4096]
    except OSError:
        return False
    return re.search(r"^ruleset\s*:", head, re.MULTILINE) is not None
