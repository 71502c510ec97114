"""The condition language of rules files, parsed safely (never eval/exec).

Grammar (lowest precedence first)::

    expr    := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | compare
    compare := sum (('=='|'!='|'<'|'<='|'>'|'>=') sum | ['not'] 'in' list)?
    sum     := product (('+'|'-') product)*
    product := unary (('*'|'/') unary)*
    unary   := '-' unary | atom
    atom    := NUMBER | STRING | true | false | null | FACT | '(' expr ')'

Semantics: a comparison in which any fact is null is false (`x == null` and
`x != null` are the ways to test for null); `not` negates. A bare yes/no fact
means `fact == true`. `evaluate` is the plain-Python meaning; the compiled
durable_rules ruleset must agree with it (a property test checks that).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from otrules.engine.facts import FACTS, FactInfo
from otrules.schemas import OtrulesError
from otrules.schemas.instruments import MAX_NUMBER

Value = float | str | bool | None

MAX_LITERAL = MAX_NUMBER
"""The largest number a condition may write, either way (`-1e15` to `1e15`): durable_rules
cannot take infinite numbers (`1e999`), and its own edge for huge ones is narrower than
a float's. It is `MAX_NUMBER` in otrules/schemas/instruments.py (adjust it there), which
bounds instrument values too; docs/authoring.md quotes it."""


class ConditionError(OtrulesError, ValueError):
    """A condition that cannot be parsed or type-checked; `col` is 1-based."""

    def __init__(self, message: str, col: int | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.col = col
        self.hint = hint


# ---------------------------------------------------------------- AST nodes


@dataclass(frozen=True, slots=True)
class Const:
    value: Value
    col: int = 0


@dataclass(frozen=True, slots=True)
class Fact:
    name: str
    col: int = 0


@dataclass(frozen=True, slots=True)
class Arith:
    op: str  # + - * /
    left: Node
    right: Node
    col: int = 0


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Node
    col: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >=
    left: Node
    right: Node
    col: int = 0


@dataclass(frozen=True, slots=True)
class In:
    operand: Node
    values: tuple[Value, ...]
    col: int = 0


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]
    col: int = 0


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]
    col: int = 0


@dataclass(frozen=True, slots=True)
class Not:
    item: Node
    col: int = 0


Node = Const | Fact | Arith | Neg | Compare | In | And | Or | Not

# ---------------------------------------------------------------- tokenizer

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|\(|\)|\[|\]|,|&&|\|\||=|!)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_UNESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # number string name op kw end
    text: str
    col: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ConditionError(f"unexpected character {text[pos]!r}", pos + 1)
        kind = m.lastgroup or ""
        if kind != "ws":
            word = m.group()
            if kind == "name" and word.lower() in _KEYWORDS:
                kind, word = "kw", word.lower()
            out.append(_Tok(kind, word, pos + 1))
        pos = m.end()
    out.append(_Tok("end", "", len(text) + 1))
    return out


# ---------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, *texts: str) -> _Tok | None:
        tok = self.tok
        if tok.kind == kind and (not texts or tok.text in texts):
            self.i += 1
            return tok
        return None

    def expect(self, kind: str, text: str, what: str) -> _Tok:
        tok = self.accept(kind, text)
        if tok is None:
            raise ConditionError(f"expected {what}, found {self._describe(self.tok)}", self.tok.col)
        return tok

    @staticmethod
    def _describe(tok: _Tok) -> str:
        return "the end of the condition" if tok.kind == "end" else repr(tok.text)

    def parse(self) -> Node:
        node = self.expr()
        if self.tok.kind != "end":
            hint = None
            hint = {"&&": "write and", "||": "write or", "=": "write == to compare", "!": "write not"}.get(
                self.tok.text)
            raise ConditionError(f"unexpected {self._describe(self.tok)}", self.tok.col, hint)
        return node

    def expr(self) -> Node:
        first = self.tok.col
        items = [self.and_()]
        while self.accept("kw", "or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(items), first)

    def and_(self) -> Node:
        first = self.tok.col
        items = [self.not_()]
        while self.accept("kw", "and"):
            items.append(self.not_())
        return items[0] if len(items) == 1 else And(tuple(items), first)

    def not_(self) -> Node:
        tok = self.accept("kw", "not")
        if tok:
            return Not(self.not_(), tok.col)
        return self.compare()

    def compare(self) -> Node:
        left = self.sum_()
        tok = self.accept("op", "==", "!=", "<", "<=", ">", ">=")
        if tok:
            return Compare(tok.text, left, self.sum_(), tok.col)
        if self.tok.kind == "kw" and self.tok.text == "not" and self.toks[self.i + 1].text == "in":
            col = self.take().col
            self.take()
            return Not(In(left, self.list_(), col), col)
        tok = self.accept("kw", "in")
        if tok:
            return In(left, self.list_(), tok.col)
        if self.tok.kind == "op" and self.tok.text == "=":
            raise ConditionError("'=' is not an operator", self.tok.col, "write == to compare")
        return left

    def list_(self) -> tuple[Value, ...]:
        self.expect("op", "[", "'[' to start a list")
        values: list[Value] = []
        while True:
            values.append(self.literal())
            if self.accept("op", "]"):
                return tuple(values)
            self.expect("op", ",", "',' or ']' in the list")

    def literal(self) -> Value:
        tok = self.take()
        neg, col = False, tok.col
        if tok.kind == "op" and tok.text == "-":
            neg, tok = True, self.take()
        if tok.kind == "number":
            return _number(tok, neg, col)
        if tok.kind == "string" and not neg:
            return _text(tok)
        raise ConditionError(f"expected a number or a quoted text in the list, found {self._describe(tok)}", tok.col)

    def sum_(self) -> Node:
        node = self.product()
        while True:
            tok = self.accept("op", "+", "-")
            if not tok:
                return node
            node = Arith(tok.text, node, self.product(), tok.col)

    def product(self) -> Node:
        node = self.unary()
        while True:
            tok = self.accept("op", "*", "/")
            if not tok:
                return node
            node = Arith(tok.text, node, self.unary(), tok.col)

    def unary(self) -> Node:
        tok = self.accept("op", "-")
        if tok:
            if self.tok.kind == "number":  # a negative number: checked with its sign, as it was written
                return Const(_number(self.take(), True, tok.col), tok.col)
            operand = self.unary()
            if isinstance(operand, Const) and isinstance(operand.value, float):
                return Const(-operand.value, tok.col)
            return Neg(operand, tok.col)
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind == "number":
            return Const(_number(tok), tok.col)
        if tok.kind == "string":
            return Const(_text(tok), tok.col)
        if tok.kind == "kw" and tok.text in ("true", "false", "null"):
            return Const({"true": True, "false": False, "null": None}[tok.text], tok.col)
        if tok.kind == "name":
            return Fact(tok.text, tok.col)
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            self.expect("op", ")", "')'")
            return node
        raise ConditionError(f"expected a fact, a number or '(' but found {self._describe(tok)}", tok.col)


MAX_TEXT_BYTES = 4096
"""The longest quoted text a condition may compare with, in UTF-8 bytes. durable_rules compares
texts of 64 KiB and more wrongly (their lengths wrap), and no fact otrules compares is that long."""


def _text(tok: _Tok) -> str:
    value = _UNESCAPE.sub(r"\1", tok.text[1:-1])
    size = len(value.encode())
    if size > MAX_TEXT_BYTES:
        raise ConditionError(f"the quoted text is {size:,} bytes long, over the {MAX_TEXT_BYTES:,}-byte limit", tok.col)
    return value


def _number(tok: _Tok, neg: bool = False, col: int | None = None) -> float:
    """The value of a number token (negated if `neg`); ConditionError if it is out of range."""
    value = float(tok.text)
    if not value <= MAX_LITERAL:  # also inf (1e999)
        shown = ("-" if neg else "") + tok.text
        raise ConditionError(f"the number {shown} is out of range (a number in a condition is at most "
                             f"{MAX_LITERAL:,.0f} either way)", col or tok.col)
    return -value if neg else value


def parse(text: str) -> Node:
    """Parse one condition string into an AST (not yet type-checked)."""
    if not text.strip():
        raise ConditionError("the condition is empty", 1)
    return _Parser(text).parse()


# ---------------------------------------------------------------- type checking

_TYPE_WORDS = {"number": "a number", "string": "text", "bool": "yes/no", "null": "null"}


def check(node: Node, facts: Mapping[str, FactInfo] = FACTS) -> Node:
    """Type-check a parsed condition; return it with bare yes/no facts made explicit."""
    node = _normalise(node, facts)
    _type_of(node, facts, want_bool=True)
    return node


def check_values(node: Node, facts: Mapping[str, FactInfo] = FACTS) -> None:
    """Refuse a text compared with a fact that never takes it (`plan.setting == "outpatinet"`):
    such a comparison never matches (and with `!=` or `not in` always does). Only facts with
    a fixed set of values (`FactInfo.values`) are checked; ConditionError says which."""
    for n in walk(node):
        for name, value, col in text_literals(n):
            known = facts[name].values if name in facts else ()
            if known and value not in known:
                close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
                raise ConditionError(f"unknown value {value!r} compared with {name}", col,
                                     f"did you mean {close[0]}?" if close else f"{name} is one of {', '.join(known)}")


def text_literals(node: Node) -> list[tuple[str, str, int]]:
    """(fact, text, column) for each text this one comparison (or `in`) holds up to a fact,
    in either order: `plan.setting == "school"`, `"school" != plan.setting`, `x in ["a"]`."""
    if isinstance(node, Compare):
        pairs = [(node.left, node.right), (node.right, node.left)]
        return [(f.name, c.value, c.col or node.col) for f, c in pairs
                if isinstance(f, Fact) and isinstance(c, Const) and isinstance(c.value, str)]
    if isinstance(node, In) and isinstance(node.operand, Fact):
        return [(node.operand.name, v, node.col) for v in node.values if isinstance(v, str)]
    return []


def unknown_fact_hint(name: str, facts: Mapping[str, FactInfo] = FACTS) -> str | None:
    close = difflib.get_close_matches(name, list(facts), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def _fact_info(node: Fact, facts: Mapping[str, FactInfo]) -> FactInfo:
    info = facts.get(node.name)
    if info is None:
        raise ConditionError(f"unknown fact {node.name!r}", node.col, unknown_fact_hint(node.name, facts))
    return info


def _normalise(node: Node, facts: Mapping[str, FactInfo]) -> Node:
    """`goal.met` in a yes/no position becomes `goal.met == true`."""
    if isinstance(node, Fact):
        info = _fact_info(node, facts)
        if info.type != "bool":
            example = f"{node.name} >= 5" if info.type == "number" else f'{node.name} == "..."'
            raise ConditionError(
                f"{node.name} is {_TYPE_WORDS[info.type]}, not a yes/no fact", node.col, f"compare it, e.g. {example}"
            )
        return Compare("==", node, Const(True, node.col), node.col)
    if isinstance(node, And):
        return And(tuple(_normalise(i, facts) for i in node.items), node.col)
    if isinstance(node, Or):
        return Or(tuple(_normalise(i, facts) for i in node.items), node.col)
    if isinstance(node, Not):
        return Not(_normalise(node.item, facts), node.col)
    return node


def _type_of(node: Node, facts: Mapping[str, FactInfo], want_bool: bool = False) -> str:
    if isinstance(node, (And, Or)):
        for item in node.items:
            _expect_bool(item, facts)
        return "bool"
    if isinstance(node, Not):
        _expect_bool(node.item, facts)
        return "bool"
    if isinstance(node, Const):
        t = "null" if node.value is None else "bool" if isinstance(node.value, bool) else (
            "number" if isinstance(node.value, float) else "string")
        if want_bool and t != "bool":
            raise ConditionError(f"a condition must be yes/no, not {_TYPE_WORDS[t]}", node.col)
        return t
    if isinstance(node, Fact):
        return _fact_info(node, facts).type
    if isinstance(node, Neg):
        _expect(node.operand, "number", facts, "'-' needs a number")
        return "number"
    if isinstance(node, Arith):
        _expect(node.left, "number", facts, f"'{node.op}' needs numbers")
        _expect(node.right, "number", facts, f"'{node.op}' needs numbers")
        return "number"
    if isinstance(node, In):
        t = _type_of(node.operand, facts)
        for value in node.values:
            vt = "number" if isinstance(value, float) else "string"
            if vt != t:
                raise ConditionError(
                    f"'in' compares {_TYPE_WORDS[t]} with a list holding {_TYPE_WORDS[vt]} {_show(value)}", node.col)
        return "bool"
    if isinstance(node, Compare):
        lt, rt = _type_of(node.left, facts), _type_of(node.right, facts)
        if "null" in (lt, rt):
            if node.op not in ("==", "!="):
                raise ConditionError(f"null can only be tested with == or !=, not {node.op}", node.col)
            return "bool"
        if lt != rt:
            raise ConditionError(
                f"cannot compare {_TYPE_WORDS[lt]} ({_show_node(node.left)}) "
                f"with {_TYPE_WORDS[rt]} ({_show_node(node.right)})",
                node.col,
                "a yes/no fact is tested on its own, e.g. goal.met or not goal.met" if "bool" in (lt, rt) else None,
            )
        if lt != "number" and node.op not in ("==", "!="):
            raise ConditionError(
                f"{node.op} compares numbers; {_TYPE_WORDS[lt]} can only be tested with == or !=", node.col)
        return "bool"
    raise AssertionError(node)  # pragma: no cover


def _expect_bool(node: Node, facts: Mapping[str, FactInfo]) -> None:
    t = _type_of(node, facts, want_bool=True)
    if t != "bool":
        raise ConditionError(f"expected a yes/no condition, found {_TYPE_WORDS[t]} ({_show_node(node)})", _col(node))


def _expect(node: Node, want: str, facts: Mapping[str, FactInfo], message: str) -> None:
    t = _type_of(node, facts)
    if t != want:
        raise ConditionError(f"{message}, found {_TYPE_WORDS[t]} ({_show_node(node)})", _col(node))


def _col(node: Node) -> int:
    return node.col


def _show(value: Value) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"'


def _show_node(node: Node) -> str:
    return to_text(node)


# ---------------------------------------------------------------- helpers


def facts_named(node: Node) -> list[str]:
    """Fact names in order of first appearance."""
    seen: dict[str, None] = {}
    for n in walk(node):
        if isinstance(n, Fact):
            seen.setdefault(n.name, None)
    return list(seen)


def walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, (And, Or)):
        for item in node.items:
            yield from walk(item)
    elif isinstance(node, Not):
        yield from walk(node.item)
    elif isinstance(node, (Arith, Compare)):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, (Neg, In)):
        yield from walk(node.operand)


_PREC = {Or: 1, And: 2, Not: 3, Compare: 4, In: 4, Arith: 5, Neg: 7}


def to_text(node: Node) -> str:
    """Render an AST back to condition syntax (for messages and explain)."""
    if isinstance(node, Const):
        return _show(node.value)
    if isinstance(node, Fact):
        return node.name
    if isinstance(node, Neg):
        return f"-{_wrap(node.operand, 6)}"
    if isinstance(node, Arith):
        p = 5 if node.op in "+-" else 6
        return f"{_wrap(node.left, p)} {node.op} {_wrap(node.right, p + 1)}"
    if isinstance(node, Compare):
        if (node.op == "==" and isinstance(node.left, Fact) and isinstance(node.right, Const)
                and node.right.value is True):
            return node.left.name  # a yes/no fact on its own, as it was written
        return f"{_wrap(node.left, 5)} {node.op} {_wrap(node.right, 5)}"
    if isinstance(node, In):
        return f"{_wrap(node.operand, 5)} in [{', '.join(_show(v) for v in node.values)}]"
    if isinstance(node, Not):
        return f"not {_wrap(node.item, 3)}"
    if isinstance(node, And):
        return " and ".join(_wrap(i, 3) for i in node.items)
    if isinstance(node, Or):
        return " or ".join(_wrap(i, 2) for i in node.items)
    raise AssertionError(node)  # pragma: no cover


def _wrap(node: Node, min_prec: int) -> str:
    prec = 6 if isinstance(node, Arith) and node.op in "*/" else _PREC.get(type(node), 9)
    text = to_text(node)
    return f"({text})" if prec < min_prec else text


# ---------------------------------------------------------------- reference evaluation

_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
}
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def value_of(node: Node, facts: Mapping[str, Any]) -> Value:
    """A number, text, yes/no or null; arithmetic with a null (or /0) is null, and so is
    arithmetic that overflows (an infinite or undefined result compares with nothing)."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Fact):
        return facts.get(node.name)
    if isinstance(node, Neg):
        v = value_of(node.operand, facts)
        return None if v is None else -v  # type: ignore[operator]
    if isinstance(node, Arith):
        a, b = value_of(node.left, facts), value_of(node.right, facts)
        if a is None or b is None or (node.op == "/" and b == 0):
            return None
        result = _ARITH[node.op](a, b)  # type: ignore[arg-type]
        return result if math.isfinite(result) else None
    return evaluate(node, facts)


def evaluate(node: Node, facts: Mapping[str, Any]) -> bool:
    """The meaning of a checked condition for one set of fact values."""
    if isinstance(node, And):
        return all(evaluate(i, facts) for i in node.items)
    if isinstance(node, Or):
        return any(evaluate(i, facts) for i in node.items)
    if isinstance(node, Not):
        return not evaluate(node.item, facts)
    if isinstance(node, Const):
        return node.value is True
    if isinstance(node, In):
        v = value_of(node.operand, facts)
        return v is not None and v in node.values
    if isinstance(node, Compare):
        if _is_null(node.left) or _is_null(node.right):
            other = node.right if _is_null(node.left) else node.left
            is_null = value_of(other, facts) is None
            return is_null if node.op == "==" else not is_null
        a, b = value_of(node.left, facts), value_of(node.right, facts)
        if a is None or b is None:
            return False
        return _CMP[node.op](a, b)
    if isinstance(node, Fact):
        return facts.get(node.name) is True
    raise AssertionError(node)  # pragma: no cover


def _is_null(node: Node) -> bool:
    return isinstance(node, Const) and node.value is None
