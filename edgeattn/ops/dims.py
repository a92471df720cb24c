"""Dims of onnx-ir values, and symbolic dimension names (`dim_param`) in one canonical spelling, without
evaluating them.

Exporters write lengths such as "past_sequence + sequence" or "2*s//2". Two sites have the same length
when their expressions are equal as polynomials, so the expressions are parsed by a small recursive
descent parser that accepts only names, non-negative integers, `+`, `-`, `*`, `//` and parentheses, and
normalised: a polynomial with integer coefficients over names and floor-division terms, printed with its
terms sorted. Anything else (and anything too long or too deep) stays as written: it is only ever compared
as text. Text from a file is never handed to an evaluator.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Dict, Tuple, Union

if TYPE_CHECKING:
    import onnx_ir as ir

MAX_CHARS = 256  # longer dim names are compared as written
MAX_DEPTH = 32  # nesting of parentheses and operators
MAX_DIGITS = 18  # integers beyond int64 are not lengths

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_.]*)|(//|[-+*()]))")

# A monomial is a sorted tuple of factors (names or "(a)//(b)" atoms); a polynomial maps monomials to coefficients.
Monomial = Tuple[str, ...]
Polynomial = Dict[Monomial, int]


class _Unparsable(Exception):
    pass


# A dim: int (static), str (symbolic) or None (unknown).
Dim = Union[int, str, None]


def dims(value: ir.Value | None) -> list[Dim] | None:
    """The dims of `value` (int static, str symbolic, None unknown), or None when its rank is unknown."""
    if value is None or value.shape is None:
        return None
    return [dim if isinstance(dim, int) else (dim.value or None) for dim in value.shape]


def static_dim(value: ir.Value | None, axis: int) -> int | None:
    """Axis `axis` of `value` when it is a known int, else None."""
    shape = dims(value)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


def canonical_dim(dim: object) -> object:
    """Ints as they are; a symbolic expression in its canonical spelling ("s + p" and "p+s" are the same
    length); a string the grammar does not accept, unchanged."""
    if not isinstance(dim, str):
        return dim
    try:
        polynomial = _Parser(dim).parse()
    except _Unparsable:
        return dim
    return _format(polynomial)


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_CHARS:
            raise _Unparsable
        self.tokens = _tokens(text)
        self.position = 0

    def parse(self) -> Polynomial:
        result = self._sum(0)
        if self.position != len(self.tokens):
            raise _Unparsable
        return result

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise _Unparsable
        self.position += 1
        return token

    def _sum(self, depth: int) -> Polynomial:
        if depth > MAX_DEPTH:
            raise _Unparsable
        result = self._product(depth + 1)
        while self._peek() in ("+", "-"):
            sign = 1 if self._take() == "+" else -1
            result = _add(result, _scale(self._product(depth + 1), sign))
        return result

    def _product(self, depth: int) -> Polynomial:
        result = self._unary(depth + 1)
        while self._peek() in ("*", "//"):
            operator = self._take()
            right = self._unary(depth + 1)
            result = _multiply(result, right) if operator == "*" else _floor_divide(result, right)
        return result

    def _unary(self, depth: int) -> Polynomial:
        if depth > MAX_DEPTH:
            raise _Unparsable
        token = self._take()
        if token == "-":
            return _scale(self._unary(depth + 1), -1)
        if token == "(":
            inner = self._sum(depth + 1)
            if self._take() != ")":
                raise _Unparsable
            return inner
        if token.isdigit():
            if len(token) > MAX_DIGITS:
                raise _Unparsable
            return {(): int(token)} if int(token) else {}
        if token[0].isalpha() or token[0] == "_":
            return {(token,): 1}
        raise _Unparsable


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        found = _TOKEN.match(text, position)
        if found is None:
            raise _Unparsable
        tokens.append(found.group(found.lastindex or 0))
        position = found.end()
    return tokens


def _add(a: Polynomial, b: Polynomial) -> Polynomial:
    out = dict(a)
    for monomial, coefficient in b.items():
        out[monomial] = out.get(monomial, 0) + coefficient
    return {m: c for m, c in out.items() if c}


def _scale(a: Polynomial, factor: int) -> Polynomial:
    return {m: c * factor for m, c in a.items() if c * factor}


def _multiply(a: Polynomial, b: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            monomial = tuple(sorted(ma + mb))
            out[monomial] = out.get(monomial, 0) + ca * cb
    if len(out) > 64 or any(abs(c) >= 1 << 62 for c in out.values()):
        raise _Unparsable
    return {m: c for m, c in out.items() if c}


def _floor_divide(a: Polynomial, b: Polynomial) -> Polynomial:
    if not b:
        raise _Unparsable  # division by zero: not a length
    if set(a) <= {()} and set(b) == {()}:
        return {(): a.get((), 0) // b[()]} if a.get((), 0) // b[()] else {}
    divisor = b.get(()) if set(b) == {()} else None
    if divisor is not None and divisor > 0 and all(c % divisor == 0 for c in a.values()):
        return {m: c // divisor for m, c in a.items()}  # exact: every term is a multiple of the divisor
    return {(f"({_format(a)})//({_format(b)})",): 1}


def _format(polynomial: Polynomial) -> str:
    if not polynomial:
        return "0"
    parts = []
    for monomial in sorted(polynomial, key=lambda m: (len(m), m)):
        coefficient = polynomial[monomial]
        factors = "*".join(monomial)
        if not factors:
            body = str(abs(coefficient))
        elif abs(coefficient) == 1:
            body = factors
        else:
            body = f"{abs(coefficient)}*{factors}"
        sign = "-" if coefficient < 0 else "+"
        parts.append((sign, body))
    first_sign, first = parts[0]
    text = ("-" if first_sign == "-" else "") + first
    for sign, body in parts[1:]:
        text += f" {sign} {body}"
    return text


__all__ = ["Dim", "canonical_dim", "dims", "static_dim"]
