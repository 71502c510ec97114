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
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.reader import ReaderError

from otrules.engine.conditions import (
    And,
    ConditionError,
    Node,
    Not,
    Or,
    check,
    check_values,
    facts_named,
    parse,
    text_literals,
    to_text,
    unknown_fact_hint,
    walk,
)
from otrules.engine.facts import FACTS
from otrules.schemas import (
    Catalogue,
    Instrument,
    InstrumentOverride,
    OtrulesError,
    Recommend,
    RulesetFile,
    RuleSpec,
    Throttle,
)
from otrules.schemas._errors import field_path, show_value
from otrules.schemas.instruments import MAX_NUMBER
from otrules.schemas.rulesets import ID_RULE

SUMMARY_MAX = 139  # CDS Hooks: a card summary is "<140 characters"
MAX_FILE_BYTES = 4 * 1024 * 1024
"""Rules files, test-case files and the catalogue larger than this are refused before
they are parsed (docs/authoring.md, "Limits and what is refused")."""
MAX_RULES = 2500
"""Rules in one file at most: each 64 or so become one durable_rules ruleset of about
1.5 MiB once used, and a file of this size loads in a few seconds (bench/rules_scale.py)."""
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ID_SHOWN = 80  # a longer rule id (already an error) is cut short where it prefixes a message


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
        """One line: text from the file (a rule id, a value) shows control characters escaped."""
        where = f"{one_line(self.file)}:{self.line}:{self.col}: "
        rule_id = str(self.rule_id) if self.rule_id is not None else ""
        shown = rule_id if rule_id.isprintable() else repr(rule_id)
        shown = shown if len(shown) <= _ID_SHOWN else shown[:_ID_SHOWN - 1] + "…"
        rule = f"rule {shown}: " if rule_id else ""
        hint = f" (hint: {one_line(self.hint)})" if self.hint else ""
        return f"{where}{rule}{one_line(self.message)}{hint}"


def one_line(text: str) -> str:
    """`text` with each character that is not printable (newline, tab, other control and
    format characters) written as Python writes it in a string literal, e.g. `\\n`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class RulesetError(OtrulesError, ValueError):
    """A rules file (or several) that cannot be used; `problems` lists every error."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


Leaf = tuple[Node, int, int, bool]
"""A parsed condition string, the line and column where its text starts, and whether
columns inside it can be counted from there (a one-line plain or quoted scalar)."""


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
    when_leaves: tuple[Leaf, ...] = ()  # each condition string of `when`, where it is in the file


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
    instrument_field_at: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # "id.min" -> line, col

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


def load_ruleset(path: str | Path, catalogue: Catalogue | None = None) -> CompiledRuleset:
    """Read, validate and type-check one rules file (see `parse_ruleset_text` for `catalogue`)."""
    path = Path(path)
    text, problems = read_text(path)
    if problems:
        raise RulesetError(problems)
    return parse_ruleset_text(text, str(path), catalogue)


def parse_ruleset_text(text: str, filename: str = "<rules>", catalogue: Catalogue | None = None) -> CompiledRuleset:
    """Validate and type-check a rules file's text; RulesetError lists every error.

    With a `catalogue`, a file that is rejected also has its instruments checked
    (as `instrument_problems` does for a file that loads), so one pass shows all.
    """
    problems = _size_problems(len(text.encode("utf-8", errors="surrogatepass")), filename)
    problems += _count_problems(text, filename)
    if problems:
        raise RulesetError(problems)
    data, problems = _parse_yaml(text, filename)
    if problems:
        raise RulesetError(problems)
    try:
        return _compile(data, filename, catalogue)
    except RecursionError:
        raise RulesetError([Problem(filename, 1, 1, "nested too deeply to check")]) from None


_RULE_START = re.compile(r"^[ \t]*-[ \t]+id[ \t]*:", re.MULTILINE)


def _count_problems(text: str, filename: str) -> list[Problem]:
    """Too many rules, seen before the (slow) YAML parse, so the refusal is immediate: rules
    written `- id: ...` are counted in the text (any other way, the parsed file is counted)."""
    for n, found in enumerate(_RULE_START.finditer(text)):
        if n == MAX_RULES:
            line = text.count("\n", 0, found.start()) + 1
            col = found.group(0).index("id") + 1  # where the rule (a mapping) starts, as the parser says
            total = sum(1 for _ in _RULE_START.finditer(text))
            return [_too_many(filename, line, col, total)]
    return []


def _too_many(filename: str, line: int, col: int, total: int) -> Problem:
    return Problem(filename, line, col, f"the file has {total:,} rules, over the {MAX_RULES:,}-rule limit",
                   hint="split it into several rulesets")


def _compile(data: Any, filename: str, catalogue: Catalogue | None) -> CompiledRuleset:
    try:
        spec = RulesetFile.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(filename, data, exc)
        problems += _raw_problems(filename, data, catalogue)
        raise RulesetError(_dedupe(problems)) from None
    if len(spec.rules) > MAX_RULES:
        line, col = _pos(data["rules"][MAX_RULES], None)
        raise RulesetError([_too_many(filename, line, col, len(spec.rules))])
    rules: list[Rule] = []
    problems = []
    seen: dict[str, int] = {}
    for index, rule_spec in enumerate(spec.rules):
        node = data["rules"][index]
        line, _col = _pos(node, None)
        if rule_spec.id in seen:
            problems.append(Problem(filename, *_pos(node, "id"),
                                    f"duplicate rule id (first at line {seen[rule_spec.id]})", rule_spec.id))
        else:
            seen[rule_spec.id] = line
        try:
            rules.append(_build_rule(rule_spec, node, filename, line))  # a duplicate too, so all its errors show
        except _RuleProblems as bad:
            problems.extend(bad.problems)
    instrument_at = {iid: _pos(data.get("instruments"), iid) for iid in spec.instruments}
    if problems:
        if catalogue is not None:  # also for rules that did not build
            problems += _raw_instrument_problems(filename, data, _raw_rule_problems(filename, data)[1], catalogue)
        raise RulesetError(_dedupe(problems))
    return CompiledRuleset(
        name=spec.ruleset,
        version=spec.version,
        description=spec.description,
        digest=_digest(spec),
        source=filename,
        rules=tuple(r for r in rules),
        spec=spec,
        instrument_at=instrument_at,
        instrument_field_at=_field_at(data),
    )


def load_rulesets(paths: Iterable[str | Path], catalogue: Catalogue | None = None) -> list[CompiledRuleset]:
    """Rules files and folders (every *.yaml in a folder that has `ruleset:`).

    When any file is rejected, the error lists every problem in every file,
    instruments included when a `catalogue` is given. A set that loads is
    returned; callers check its instruments with `instrument_problems`.
    """
    paths = list(paths)
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
    unchecked: list[Problem] = []  # instrument problems of files that load, reported only with the others
    for f in files:
        try:
            loaded.append(load_ruleset(f, catalogue))
        except RulesetError as exc:
            problems.extend(exc.problems)
            continue
        except OSError as exc:
            problems.append(Problem(str(f), 1, 1, f"cannot read the file: {exc.strerror}"))
            continue
        if catalogue is not None:
            unchecked.extend(instrument_problems(loaded[-1], catalogue))
    names: dict[str, str] = {}
    total = 0
    for rs in loaded:
        if rs.name in names:
            problems.append(Problem(rs.source, 1, 1, f"ruleset {rs.name!r} is also defined in {names[rs.name]}"))
        names.setdefault(rs.name, rs.source)
        if total <= MAX_RULES < total + len(rs.rules):  # the cap holds for everything loaded together
            rule = rs.rules[MAX_RULES - total]
            together = sum(len(r.rules) for r in loaded)
            problems.append(Problem(rs.source, rule.line, 1, f"the rules files hold {together:,} rules together, "
                                    f"over the {MAX_RULES:,}-rule limit; this is rule {MAX_RULES + 1:,}", rule.id,
                                    "run them as separate services"))
        total += len(rs.rules)
    if problems:
        raise RulesetError(_in_file_order(problems + unchecked, files))
    return loaded


# ---------------------------------------------------------------- rule building


class _RuleProblems(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems


def _build_rule(spec: RuleSpec, node: Any, filename: str, line: int) -> Rule:
    problems: list[Problem] = []
    condition = None
    leaves: list[Leaf] = []
    try:
        condition = _condition(spec.when, node.get("when"), node, filename, spec.id, leaves=leaves)
    except _RuleProblems as bad:
        problems.extend(bad.problems)
    names = facts_named(condition) if condition is not None else []
    texts = {"summary": spec.recommend.summary, "detail": spec.recommend.detail}
    template_facts = _template_problems(texts, node.get("recommend"), filename, spec.id, problems)
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
        when_leaves=tuple(leaves),
    )


def _condition(when: Any, raw: Any, parent: Any, filename: str, rule_id: str | None, key: Any = "when",
               leaves: list[Leaf] | None = None) -> Node:
    """Parse `when`, a string or {all|any|not: ...}; positions from the YAML.

    Each condition string that parses is added to `leaves` with its position (even
    if it does not type-check, so its instruments can be checked in the same pass)."""
    if isinstance(when, str):
        line, col = _pos(parent, key)
        col += _scalar_offset(raw)
        parsed = None
        try:
            parsed = parse(when)
            node = check(parsed)
            check_values(node)
            if leaves is not None:
                leaves.append((node, line, col, _is_plain_one_line(raw)))
            return node
        except ConditionError as err:
            if leaves is not None and parsed is not None:
                leaves.append((parsed, line, col, _is_plain_one_line(raw)))
            at = col + (err.col - 1 if err.col else 0) if _is_plain_one_line(raw) else col
            raise _RuleProblems([Problem(filename, line, at, f"when: {err.message}", rule_id, err.hint)]) from None
    problems: list[Problem] = []
    items: list[Node] = []
    if hasattr(when, "all") or hasattr(when, "any"):
        word = "all" if hasattr(when, "all") else "any"
        for i, sub in enumerate(getattr(when, word)):
            try:
                items.append(_condition(sub, raw[word][i], raw[word], filename, rule_id, i, leaves))
            except _RuleProblems as bad:
                problems.extend(bad.problems)
        if problems:
            raise _RuleProblems(problems)
        return And(tuple(items)) if word == "all" else Or(tuple(items))
    return Not(_condition(when.not_, raw["not"], raw, filename, rule_id, "not", leaves))


def _when_at(node: Any) -> tuple[int, int]:
    raw = node.get("when") if isinstance(node, dict) else None
    line, col = _pos(node, "when")
    return (line, col + _scalar_offset(raw)) if _is_plain_one_line(raw) else (line, col)


def instrument_problems(ruleset: CompiledRuleset, known: set[str] | Catalogue) -> list[Problem]:
    """Instrument ids in conditions and overrides that the catalogue does not know,
    and overrides that would leave an instrument invalid (e.g. min above max).

    `known` is the catalogue or its ids; a ruleset may define new instruments under
    `instruments:` (with min, max and better), which then count as known. Given only
    ids, overrides of catalogue entries are not checked (the engine checks them again).
    """
    if isinstance(known, Catalogue):
        values: Mapping[str, Instrument | None] = known.instruments
    else:
        values = dict.fromkeys(known)  # ids only: overrides of catalogue entries are left to the engine
    return _instrument_check(ruleset.source, ruleset.spec.instruments, ruleset.instrument_at,
                             ruleset.instrument_field_at,
                             [(r.id, leaf) for r in ruleset.rules for leaf in r.when_leaves], values)


def _instrument_check(source: str, overrides: dict[str, InstrumentOverride], at: dict[str, tuple[int, int]],
                      field_at: dict[str, tuple[int, int]], conditions: list[tuple[str | None, Leaf]],
                      catalogue: Mapping[str, Instrument | None]) -> list[Problem]:
    """`catalogue` maps ids to entries, or to None where only the id is known."""
    problems: list[Problem] = []
    known = set(catalogue)
    defined = set(known)
    for iid, override in overrides.items():
        where = at.get(iid, (1, 1))
        if iid not in known:
            missing = [k for k in ("min", "max", "better") if getattr(override, k) is None]
            if missing:
                problems.append(Problem(source, *where,
                                        f"instruments.{iid}: not in the catalogue; "
                                        f"a new instrument needs {', '.join(missing)}",
                                        None, _did_you_mean(iid, known)))
                continue
            defined.add(iid)
        elif catalogue[iid] is None:
            continue  # no values to check the override against
        base = catalogue.get(iid)
        for name, message in override.problems(base, iid):
            spot = name or ("min" if override.min is not None else "max" if override.max is not None else "")
            hint = None
            if not name and base is not None and (override.min is None or override.max is None):
                hint = f"the catalogue range is {base.range_text()}; override both min and max"
            problems.append(Problem(source, *field_at.get(f"{iid}.{spot}", where),
                                    f"instruments.{iid}{'.' + name if name else ''}: {message}", None, hint))
    for rule_id, (condition, line, start, exact) in conditions:
        for node in walk(condition):
            for name, value, col in _instrument_literals(node):
                if value not in defined:
                    problems.append(Problem(source, line, start + col - 1 if exact else start,
                                            f"when: unknown instrument {value!r} compared with {name}", rule_id,
                                            _did_you_mean(value, defined) or "see rules/instruments.yaml for the ids"))
    return problems


def _instrument_literals(node: Node) -> list[tuple[str, str, int]]:
    return [lit for lit in text_literals(node) if lit[0] in _INSTRUMENT_FACTS]


_INSTRUMENT_FACTS = {"measure.instrument", "goal.instrument"}


def _did_you_mean(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def _template_problems(texts: dict[str, Any], recommend: Any, filename: str, rule_id: str | None,
                       problems: list[Problem]) -> list[str]:
    """Check `{fact.name}` placeholders in summary and detail; return the facts they name."""
    named: list[str] = []
    for key in ("summary", "detail"):
        text = texts.get(key)
        if not text or not isinstance(text, str):
            continue
        line, col = _pos(recommend, key)
        for m in _PLACEHOLDER.finditer(text):
            name = m.group(1).strip()
            if name not in FACTS:
                problems.append(Problem(filename, line, col, f"recommend.{key}: unknown fact {{{name}}}", rule_id,
                                        unknown_fact_hint(name)))
            else:
                named.append(name)
    summary = texts.get("summary")
    estimate = _rendered_length(summary) if isinstance(summary, str) else 0
    if estimate > SUMMARY_MAX:
        line, col = _pos(recommend, "summary")
        problems.append(Problem(filename, line, col,
                                f"recommend.summary can reach about {estimate} characters once filled in; "
                                f"at most {SUMMARY_MAX}",
                                rule_id, "shorten the text; longer summaries are cut with '…'"))
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
        text, problems = read_text(path)
    except OSError as exc:
        return None, [Problem(str(path), 1, 1, f"cannot read the file: {exc.strerror}")]
    if problems:
        return None, problems
    return _parse_yaml(text, str(path))


def read_text(path: Path) -> tuple[str, list[Problem]]:
    """The text of a rules, test-case or catalogue file; a problem if it is over
    MAX_FILE_BYTES (checked before anything is parsed) or not UTF-8. OSError propagates."""
    with path.open("rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return "", _size_problems(max(os.fstat(f.fileno()).st_size, len(raw)), str(path))
    return _decode(raw, str(path))


def _size_problems(size: int, filename: str) -> list[Problem]:
    if size <= MAX_FILE_BYTES:
        return []
    return [Problem(filename, 1, 1, f"the file is {size:,} bytes, over the {MAX_FILE_BYTES / 2**20:g} MiB limit",
                    None, "split it into smaller files; a folder of rules files is read as one set")]


def _decode(raw: bytes, filename: str) -> tuple[str, list[Problem]]:
    """The file's text; a file that is not UTF-8 is a problem at the first bad byte."""
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        col = len(raw[line_start:exc.start].decode("utf-8", errors="replace")) + 1
        return "", [Problem(filename, line, col, f"not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be read",
                            None, "save the file as UTF-8")]


def _parse_yaml(text: str, filename: str) -> tuple[Any, list[Problem]]:
    data, problems = parse_yaml(text, filename)
    if problems:
        return None, problems
    if not isinstance(data, dict):
        return None, [Problem(filename, 1, 1, "a rules file is a mapping with ruleset, version and rules")]
    return data, []


class _AnchorRefused(MarkedYAMLError):
    """An anchor (`&name`) or alias (`*name`), met while the file is parsed."""


class _NoAnchors(Composer):
    """Refuses the first anchor or alias as the parser reaches it, before anything is
    built from the file: a few hundred bytes of nested aliases ("billion laughs")
    would otherwise expand to billions of values in whatever walks the data."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            raise _AnchorRefused(problem=f"*{event.anchor}", problem_mark=event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _AnchorRefused(problem=f"&{event.anchor}", problem_mark=event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, filename: str) -> tuple[Any, list[Problem]]:
    """A YAML document as ruamel's round-trip data (which keeps line and column), or the
    problems that stop it being read. Anchors and aliases are refused while parsing."""
    yaml = YAML(typ="rt")
    yaml.Composer = _NoAnchors
    try:
        data = yaml.load(text)
    except _AnchorRefused as exc:
        line, col = _mark(exc.problem_mark)
        return None, [Problem(filename, line, col, f"YAML anchors and aliases are not allowed: {exc.problem}",
                              None, "write the value out in full each place it is used")]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(filename, line, col, f"not valid YAML: {exc.problem or exc.context}")]
    except ReaderError as exc:
        line, col = _line_col(text, exc.position)
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return None, [Problem(filename, line, col, f"not valid YAML: unacceptable character {char}: {exc.reason}",
                              None, "delete it; YAML files cannot hold control characters")]
    except YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, [Problem(filename, 1, 1, f"not valid YAML: {first}")]
    except RecursionError:
        return None, [Problem(filename, 1, 1, "not valid YAML: nested too deeply")]
    return data, []


def _mark(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _line_col(text: str, position: Any) -> tuple[int, int]:
    """1-based line and column of a character offset in `text`."""
    if not isinstance(position, int) or not 0 <= position <= len(text):
        return 1, 1
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1


def _pos(node: Any, key: Any) -> tuple[int, int]:
    """1-based (line, column) of `key` in a ruamel node (of the node itself if key is None)."""
    try:
        if key is None:
            return node.lc.line + 1, node.lc.col + 1
        if isinstance(node, CommentedMap):
            if key in node:
                nested = isinstance(node[key], (CommentedMap, CommentedSeq))
                line, col = node.lc.key(key) if nested else node.lc.value(key)
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
                try:  # a str index into a list raises TypeError, which ends the walk like a missing key
                    parent, last, node = node, part, node[part]  # type: ignore[index]
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
        if err["type"] == "string_pattern_mismatch" and loc[-1:] in (("id",), ("ruleset",)):
            message, hint = f"{show_value(err.get('input'))} is not a valid id", f"an id is {ID_RULE}"
        problems.append(Problem(filename, line, col, f"{path}: {message}", rule_id, hint))
    return problems


def _raw_problems(filename: str, data: Any, catalogue: Catalogue | None) -> list[Problem]:
    """What `_compile` would also report for a file that pydantic rejected, so one pass
    shows all: conditions (every string in when, all, any and not), placeholders,
    summary length, duplicate ids and, with a catalogue, instruments. Parts pydantic
    rejected are skipped; it has reported them."""
    problems, conditions = _raw_rule_problems(filename, data)
    if catalogue is not None:
        problems += _raw_instrument_problems(filename, data, conditions, catalogue)
    return problems


def _raw_rule_problems(filename: str, data: Any) -> tuple[list[Problem], list[tuple[str | None, Leaf]]]:
    """Problems in the rules of a file that may be only partly well-formed, and each
    condition string that parses, by rule id."""
    problems: list[Problem] = []
    conditions: list[tuple[str | None, Leaf]] = []
    rules = data.get("rules") if isinstance(data, dict) else None
    seen: dict[str, int] = {}
    for node in rules if isinstance(rules, list) else []:
        if not isinstance(node, dict):
            continue
        rule_id = str(node["id"]) if node.get("id") else None
        if isinstance(node.get("id"), str):
            if node["id"] in seen:
                problems.append(Problem(filename, *_pos(node, "id"),
                                        f"duplicate rule id (first at line {seen[node['id']]})", rule_id))
            else:
                seen[node["id"]] = _pos(node, None)[0]
        if "when" in node:
            leaves: list[Leaf] = []
            _raw_condition(node["when"], node, "when", filename, rule_id, leaves, problems)
            conditions += [(rule_id, leaf) for leaf in leaves]
        recommend = node.get("recommend")
        if isinstance(recommend, dict):
            _template_problems(recommend, recommend, filename, rule_id, problems)
    return problems, conditions


def _raw_instrument_problems(filename: str, data: Any, conditions: list[tuple[str | None, Leaf]],
                             catalogue: Catalogue) -> list[Problem]:
    """`instrument_problems` for a file that may be only partly well-formed."""
    overrides: dict[str, InstrumentOverride] = {}
    raw = data.get("instruments") if isinstance(data, dict) else None
    for iid, value in raw.items() if isinstance(raw, dict) else []:
        try:
            if isinstance(iid, str):
                overrides[iid] = InstrumentOverride.model_validate(value)
        except ValidationError:
            continue  # reported by pydantic
    at = {iid: _pos(raw, iid) for iid in overrides}
    return _instrument_check(filename, overrides, at, _field_at(data), conditions, catalogue.instruments)


def _raw_condition(raw: Any, parent: Any, key: Any, filename: str, rule_id: str | None, leaves: list[Leaf],
                   problems: list[Problem]) -> None:
    """Check each condition string in a `when` that may be only partly well-formed."""
    if isinstance(raw, str):
        if raw:
            try:
                _condition(raw, raw, parent, filename, rule_id, key, leaves)
            except _RuleProblems as bad:
                problems.extend(bad.problems)
        return
    if not isinstance(raw, dict):
        return
    for word in ("all", "any"):
        if isinstance(raw.get(word), list):
            for i, sub in enumerate(raw[word]):
                _raw_condition(sub, raw[word], i, filename, rule_id, leaves, problems)
    if "not" in raw:
        _raw_condition(raw["not"], raw, "not", filename, rule_id, leaves, problems)


def _field_at(data: Any) -> dict[str, tuple[int, int]]:
    """Positions of the fields of each instrument override, keyed "id.field"."""
    raw = data.get("instruments") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {f"{iid}.{name}": _pos(value, name)
            for iid, value in raw.items() if isinstance(value, dict) for name in value}


def _in_file_order(problems: list[Problem], files: list[Path]) -> list[Problem]:
    order = {str(f): i for i, f in enumerate(files)}
    return sorted(problems, key=lambda p: order.get(p.file, len(order)))


def _drop_union_noise(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    noise = {"str", "WhenAll", "WhenAny", "WhenNot", "function-after[_is_duration(), str]"}
    return tuple(p for p in loc if p not in noise)


def _message(err: ErrorDetails) -> tuple[str, str | None]:
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return "required field is missing", None
    if kind == "extra_forbidden":
        return f"unknown field (value {show_value(value)})", "check the spelling; see the rules-file JSON Schema"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{show_value(value)} is not allowed; expected {expected}", None
    bound = err.get("ctx", {}).get("le", err.get("ctx", {}).get("ge"))
    if kind == "finite_number" or (kind in ("less_than_equal", "greater_than_equal")
                                   and isinstance(bound, (int, float)) and abs(bound) == MAX_NUMBER):
        what = "the number is infinite" if isinstance(value, float) and math.isinf(value) else (
            "NaN is not a number" if isinstance(value, float) and math.isnan(value)
            else f"the number {value:g} is out of range")
        return f"{what} (a number here is at most {MAX_NUMBER:,.0f} either way)", None
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
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")  # a file that is not UTF-8 is reported by the loader
    except OSError:
        return False
    return re.search(r"^ruleset\s*:", head, re.MULTILINE) is not None
