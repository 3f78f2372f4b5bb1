"""The contact filter language of ``spoold mailout create --where``, compiled to SQL.

    city = Paris and plan != free
    (country = FR or country = BE) and not vip = yes
    age >= 18 and domain = example.org and name != ''

A comparison is FIELD OP VALUE.  FIELD is ``email``, ``name`` or ``domain``
(the contact's own columns) or any other name, an attribute (also written
``attributes.NAME``); names are letters, digits and ``_``.  OP is one of
= != < <= > >=.  VALUE is a bare word or a 'quoted' / "quoted" string; with
< <= > >= and a number it compares as numbers.  A missing attribute counts
as the empty string, so ``plan != free`` includes contacts with no plan.
``and`` binds tighter than ``or``; ``not`` and parentheses as usual.

``compile_filter`` returns an SQL condition on the contact table (alias
``c``) and its parameters: every value and attribute path is a bound
parameter, never text pasted into the SQL.  A filter that does not parse
raises FilterError naming the token and its position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from spoold.errors import FilterError

_TOKEN = re.compile(r"""\s*(?:
    (?P<op><=|>=|!=|=|<|>) | (?P<paren>[()]) | '(?P<sq>[^']*)' | "(?P<dq>[^"]*)"
    | (?P<word>[^\s()=!<>'"]+) | (?P<bad>\S))""", re.VERBOSE)
_NAME = re.compile(r"^(?:attributes\.)?([A-Za-z_][A-Za-z0-9_]*)$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_COLUMNS = {"email": "c.email", "name": "c.name", "domain": "c.domain"}
_KEYWORDS = {"and", "or", "not"}


@dataclass
class _Token:
    kind: str  # op | paren | value | word | end
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # only blanks are left
            break
        kind = match.lastgroup
        start = match.start(kind)
        if kind == "bad":
            raise FilterError(f"filter: unexpected {match.group(kind)!r} at character {start + 1}")
        if kind in ("sq", "dq"):
            tokens.append(_Token("value", match.group(kind), start))
        else:
            tokens.append(_Token(kind, match.group(kind), start))
        pos = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, json_value: str):
        self.tokens = _tokens(text)
        self.index = 0
        self.json_value = json_value
        self.params: list[Any] = []

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def fail(self, token: _Token, expected: str) -> FilterError:
        found = "the end" if token.kind == "end" else repr(token.text)
        return FilterError(f"filter: expected {expected} at character {token.pos + 1}, "
                           f"found {found}")

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "word" and token.text.lower() == word:
            self.index += 1
            return True
        return False

    def parse(self) -> str:
        sql = self.either()
        if self.peek().kind != "end":
            raise self.fail(self.peek(), "'and', 'or' or the end")
        return sql

    def either(self) -> str:
        parts = [self.both()]
        while self.keyword("or"):
            parts.append(self.both())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def both(self) -> str:
        parts = [self.negation()]
        while self.keyword("and"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def negation(self) -> str:
        if self.keyword("not"):
            return f"NOT {self.negation()}"
        token = self.peek()
        if token.kind == "paren" and token.text == "(":
            self.take()
            sql = self.either()
            closing = self.take()
            if closing.kind != "paren" or closing.text != ")":
                raise self.fail(closing, "')'")
            return sql
        return self.comparison()

    def comparison(self) -> str:
        field = self.take()
        match = _NAME.match(field.text) if field.kind == "word" else None
        if match is None or field.text.lower() in _KEYWORDS:
            raise self.fail(field, "a field name (letters, digits, _)")
        op = self.take()
        if op.kind != "op":
            raise self.fail(op, "one of = != < <= > >=")
        value = self.take()
        if value.kind not in ("word", "value"):
            raise self.fail(value, "a value")
        name = match.group(1)
        if name in _COLUMNS and not field.text.startswith("attributes."):
            column = _COLUMNS[name]
        else:
            column = self.json_value.format(column="c.attributes")
            self.params.append(f'$."{name}"')
        if op.text in ("<", "<=", ">", ">=") and _NUMBER.match(value.text):
            self.params.append(float(value.text))
            return f"(({column} + 0) {op.text} ?)"
        self.params.append(value.text)
        sql_op = "<>" if op.text == "!=" else op.text
        return f"(COALESCE({column}, '') {sql_op} ?)"


def compile_filter(text: str, json_value: str = "json_extract({column}, ?)") -> tuple[str, list]:
    """(SQL condition on contact ``c``, its parameters) for a filter; FilterError if bad."""
    if not text.strip():
        raise FilterError("filter: empty")
    parser = _Parser(text, json_value)
    sql = parser.parse()
    return f"({sql})", parser.params
