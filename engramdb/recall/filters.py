"""Recall filters: ``kinds`` and ``where`` turned into what the search can apply.

``where`` filters on occurrences (who said something, in which session, when, with which
metadata) and becomes one SQL condition over the ``occurrences`` table, evaluated once per
recall into the set of allowed engrams; ``kinds`` becomes kind codes checked in memory.

The ``where`` language (docs/recall.md, "Filters"):

- ``session`` / ``role``: a str (equality), a list of str (any of them), or an operator dict.
- ``since`` / ``until``: inclusive ticks (int).
- ``metadata``: a dict of key -> condition, all of which must hold. A condition is a plain
  value (equality) or an operator dict such as ``{"$gte": 2020, "$lt": 2024}``.

Operators: ``$eq $ne $in $nin $gt $gte $lt $lte $exists``. ``$ne`` and ``$nin`` are the exact
complements of ``$eq`` and ``$in``: an occurrence without the key (or without a role) matches
them. Numbers compare as numbers (``1`` matches ``1.0``; integers exactly, within 64 bits), str
with str by code point; a bool is not a number, and a number never matches a str (nor the
reverse): such a comparison is simply false. A list or dict value matches the same JSON
exactly. Everything user-supplied travels as a SQL parameter; the SQL text is built only from
the constants of this module.

A metadata key names a value by the top-level key of exactly that name when the occurrence's
metadata has one (so every key ingest stores can be filtered on, ``"a.b"`` included);
otherwise a key with a dot is a path into nested objects and lists (``"user.name"``,
``"tags.0"``), and a key starting with ``/`` is a JSON pointer (RFC 6901: ``~1`` stands for
``/``, ``~0`` for ``~``), which reaches a nested key that itself holds a dot
(``"/user/first.name"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from engramdb.content import MAX_METADATA_DEPTH, check_depth, encode_metadata
from engramdb.errors import InvalidInput
from engramdb.types import KIND_CODES, Kind

Sql = tuple[str, list[Any]]
"""A SQL fragment and its parameters, in the order of its ``?`` placeholders."""

OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists")
_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_LABEL_COLUMNS = {"session": "o.session", "role": "o.role"}
# Integers JSON holds as BIGINT or UBIGINT (DuckDB's json_type) lie in [-2**63, 2**64).
_INT_LOW, _INT_HIGH = -(1 << 63), (1 << 64) - 1
_INT_TYPES = "('BIGINT', 'UBIGINT')"
# The column a metadata condition reads: the value its key names in one occurrence's metadata.
_VALUE: Sql = ("_where_value", [])
# Where a stored double d stands against an int x that no double equals, once x is rounded
# to f = float(x): no double lies strictly between x and f, so d op x <=> d op' f.
_ROUNDED_UP = {">": ">=", ">=": ">=", "<": "<", "<=": "<"}  # f > x
_ROUNDED_DOWN = {">": ">", ">=": ">", "<": "<=", "<=": "<="}  # f < x


def kind_codes(kinds: Iterable[Kind | str] | None) -> list[int] | None:
    """Kind codes to keep, or None for all kinds; InvalidInput for an unknown or dead kind."""
    if kinds is None:
        return None
    if isinstance(kinds, (str, Kind)):
        kinds = [kinds]
    codes = []
    for k in kinds:
        try:
            name = Kind(k).value
        except ValueError:
            raise InvalidInput(
                f"unknown kind {k!r}; use working, short_term or long_term"
            ) from None
        if name not in KIND_CODES:
            raise InvalidInput("dead engrams are never recalled; list them with inspect")
        codes.append(KIND_CODES[name])
    return codes


def occurrence_filter(where: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """Translate a ``where`` dict into a SQL condition (and its parameters) over occurrences
    ``o``; raise InvalidInput for an unknown key or operator, or a badly typed value.

    Pure: the whole filter is checked before anything runs.
    """
    if where is None:
        return "", []
    if not isinstance(where, dict):
        raise InvalidInput("where must be a dict such as {'session': 's1', 'role': 'user'}")
    clauses: list[Sql] = []
    for key, value in where.items():
        if key in _LABEL_COLUMNS:
            clauses.extend(_label_filter(key, value))
        elif key in ("since", "until"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"where[{key!r}] must be a tick (int)")
            clauses.append(("o.tick >= ?" if key == "since" else "o.tick <= ?", [value]))
        elif key == "metadata":
            clauses.extend(_metadata_filter(value))
        else:
            raise InvalidInput(
                f"unknown filter {key!r}; use session, role, metadata, since, until"
            )
    return _join(clauses, " AND ", "")  # "" without clauses: no filter at all


def _operators(value: object, what: str) -> dict[str, Any] | None:
    """``value`` as an operator dict, or None when it is a plain value (a dict none of whose
    keys starts with ``$`` is a plain value too); InvalidInput for an unknown operator or a
    dict that mixes operators with plain keys."""
    if not isinstance(value, dict) or not value:
        return None
    ops = [k for k in value if isinstance(k, str) and k.startswith("$")]
    if not ops:
        return None
    if len(ops) != len(value):
        plain = [k for k in value if k not in ops]
        raise InvalidInput(
            f"{what} mixes operators ({', '.join(ops)}) with plain keys ({plain!r})",
            hint="use only operators, e.g. {'$gte': 1, '$lt': 5}; to match a dict whose "
                 "keys start with $, wrap it: {'$eq': {...}}",
        )
    for op in ops:
        if op not in OPERATORS:
            raise InvalidInput(f"{what}: unknown operator {op!r}; use one of "
                               f"{', '.join(OPERATORS)}")
    return value


def _label_filter(key: str, value: object) -> list[Sql]:
    """Conditions on the ``session`` or ``role`` column: a str, a list of str (any of
    them) or an operator dict whose operands are str (``$exists``: a bool)."""
    col, what = _LABEL_COLUMNS[key], f"where[{key!r}]"
    ops = _operators(value, what)
    if ops is None:
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise InvalidInput(f"{what} must be a str, a list of str or an operator dict "
                               "such as {'$in': ['alice', 'bob']}")
        for v in values:
            _check_str(v, what)
        return [(f"{col} IN (SELECT unnest(?::VARCHAR[]))", [values])]
    out: list[Sql] = []
    for op, operand in ops.items():
        where_op = f"{what}[{op!r}]"
        if op == "$exists":
            out.append((f"{col} IS {'NOT ' if _check_bool(operand, where_op) else ''}NULL", []))
        elif op in ("$in", "$nin"):
            values = _check_list(operand, where_op)
            if not all(isinstance(v, str) for v in values):
                raise InvalidInput(f"{where_op} must be a list of str")
            for v in values:
                _check_str(v, where_op)
            member = f"COALESCE(list_contains(?::VARCHAR[], {col}), FALSE)"
            out.append((member if op == "$in" else f"NOT {member}", [values]))
        else:
            if not isinstance(operand, str):
                raise InvalidInput(f"{where_op} must be a str, got {type(operand).__name__}")
            _check_str(operand, where_op)
            sql = {"$eq": f"{col} = ?", "$ne": f"{col} IS DISTINCT FROM ?"}.get(op)
            out.append((sql or f"{col} {_RANGE[op]} ?", [operand]))
    return out


def _metadata_filter(spec: object) -> list[Sql]:
    """Conditions on occurrence metadata: every key's condition must hold."""
    if not isinstance(spec, dict) or not spec:
        raise InvalidInput("where['metadata'] must be a non-empty dict")
    out: list[Sql] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InvalidInput("metadata keys must be str")
        t_sql, t_params = _target(key)
        what = f"where['metadata'][{key!r}]"
        ops = _operators(value, what)
        conds = [_metadata_condition(_VALUE, op, operand, f"{what}[{op!r}]" if ops else what)
                 for op, operand in (ops or {"$eq": value}).items()]
        sql, params = _join(conds, " AND ", "TRUE")
        # The value is extracted once per occurrence and the conditions read the column
        # (3-4x faster than repeating json_extract in each test of the condition).
        out.append((f"(SELECT {sql} FROM (SELECT {t_sql} AS {_VALUE[0]}))", [*params, *t_params]))
    return out


def _metadata_condition(target: Sql, op: str, operand: object, what: str) -> Sql:
    """One operator applied to the metadata value ``target`` (a JSON expression, NULL where
    the occurrence has no such value, and its parameters)."""
    t_sql, t_params = target
    if op == "$exists":
        return f"{t_sql} IS {'NOT ' if _check_bool(operand, what) else ''}NULL", [*t_params]
    if op in _RANGE:
        return _range(target, _RANGE[op], operand, what)
    values = _check_list(operand, what) if op in ("$in", "$nin") else [operand]
    for v in values:
        # Nested as stored metadata is (a dict around the value is level 1), bounded alike.
        check_depth({"v": v}, MAX_METADATA_DEPTH, what)
        encode_metadata({"v": v})  # JSON-serialisable, finite, valid Unicode
    sql, params = _member(target, values)
    if op in ("$ne", "$nin"):
        return f"NOT COALESCE({sql}, FALSE)", params
    return sql, params


def _member(target: Sql, values: list[Any]) -> Sql:
    """The condition "the JSON value ``target`` equals one of ``values``", by type: numbers
    as numbers (integers exactly), str, bool and null by value, lists and dicts as JSON."""
    strs: list[str] = []
    bools: list[bool] = []
    ints: list[int] = []  # compared exactly with integers stored as BIGINT or UBIGINT
    doubles: list[float] = []  # compared with values stored as doubles
    null = False
    parts: list[Sql] = []
    t_sql, t_params = target
    for v in values:
        if v is None:
            null = True
        elif isinstance(v, bool):
            bools.append(v)
        elif isinstance(v, str):
            strs.append(v)
        elif isinstance(v, int):
            if _INT_LOW <= v <= _INT_HIGH:
                ints.append(v)
            f = _as_double(v)
            if f == v or not _INT_LOW <= v <= _INT_HIGH:  # a wider int is a double in JSON
                doubles.append(f)
        elif isinstance(v, float):
            doubles.append(v)
            if v.is_integer() and _INT_LOW <= v <= _INT_HIGH:
                ints.append(int(v))
        else:  # list or dict (encode_metadata let nothing else through)
            parts.append((f"{t_sql} = json_extract(?::JSON, '$.v')",
                          [*t_params, encode_metadata({"v": v})]))
    typed = [
        (strs, "= 'VARCHAR'", "VARCHAR", f"json_extract_string({t_sql}, '$')"),
        (bools, "= 'BOOLEAN'", "BOOLEAN", f"TRY_CAST({t_sql} AS BOOLEAN)"),
        (ints, f"IN {_INT_TYPES}", "HUGEINT", f"TRY_CAST({t_sql} AS HUGEINT)"),
        (doubles, "= 'DOUBLE'", "DOUBLE", f"TRY_CAST({t_sql} AS DOUBLE)"),
    ]
    for group, json_type, sql_type, cast in typed:
        if group:
            parts.append((f"(json_type({t_sql}) {json_type} AND "
                          f"list_contains(?::{sql_type}[], {cast}))",
                          [*t_params, group, *t_params]))
    if null:
        parts.append((f"json_type({t_sql}) = 'NULL'", list(t_params)))
    return _join(parts, " OR ", "FALSE")


def _range(target: Sql, op: str, operand: object, what: str) -> Sql:
    """``target op operand`` for a number (numeric order, integers exactly) or a str (code
    point order); a value of the other type does not match."""
    t_sql, t_params = target
    if isinstance(operand, str):
        _check_str(operand, what)
        return (f"(json_type({t_sql}) = 'VARCHAR' AND "
                f"json_extract_string({t_sql}, '$') {op} ?::VARCHAR)",
                [*t_params, *t_params, operand])
    if isinstance(operand, bool) or not isinstance(operand, (int, float)):
        raise InvalidInput(f"{what} must be a number or a str, got {type(operand).__name__}")
    if isinstance(operand, float) and not math.isfinite(operand):
        raise InvalidInput(f"{what} must be a finite number, got {operand!r}")
    # Integers stored as BIGINT/UBIGINT: against the integer bound equivalent to operand.
    if isinstance(operand, float):
        bound = math.floor(operand) if op in (">", "<=") else math.ceil(operand)
    else:
        bound = operand
    bound = min(max(bound, -(1 << 64)), 1 << 64)  # outside every stored integer either way
    as_int = (f"(json_type({t_sql}) IN {_INT_TYPES} AND "
              f"TRY_CAST({t_sql} AS HUGEINT) {op} ?::HUGEINT)", [*t_params, *t_params, bound])
    # Values stored as doubles: against the operand as a double (rounding accounted for).
    f, d_op = _as_double(operand), op
    if f > operand:
        d_op = _ROUNDED_UP[op]
    elif f < operand:
        d_op = _ROUNDED_DOWN[op]
    as_double = (f"(json_type({t_sql}) = 'DOUBLE' AND TRY_CAST({t_sql} AS DOUBLE) {d_op} "
                 "?::DOUBLE)", [*t_params, *t_params, f])
    return _join([as_int, as_double], " OR ", "FALSE")


def _target(key: str) -> Sql:
    """The JSON value a metadata filter ``key`` names (SQL NULL where there is none): the
    top-level key of that name if present, else the key read as a path (see the module
    docstring)."""
    literal = _key_pointer(key)
    if key.startswith("/"):
        path = key  # a JSON pointer as given
    elif "." in key:
        path = "/" + "/".join(_escape(part) for part in key.split("."))
    else:
        return "json_extract(o.metadata, ?)", [literal]
    return "COALESCE(json_extract(o.metadata, ?), json_extract(o.metadata, ?))", [literal, path]


def _key_pointer(key: str) -> str:
    """The JSON pointer (RFC 6901) of the top-level metadata ``key``; InvalidInput for a key
    that cannot be stored (a lone surrogate).

    A pointer rather than a JSONPath (``$."key"``): DuckDB rejects the empty key in a path
    (a binder error, which reached the caller as CorruptStore), and misses a key with a
    non-ASCII character, which ``json.dumps`` writes as a \\u escape (a silent empty
    answer). A pointer names every key as it is, once ``~`` and ``/`` are escaped.
    """
    _check_str(key, "metadata key")
    return "/" + _escape(key)


def _escape(key: str) -> str:
    """``key`` as one reference token of a JSON pointer."""
    return key.replace("~", "~0").replace("/", "~1")


def _as_double(x: int | float) -> float:
    """``x`` as a float; an int beyond the doubles' range becomes +-inf."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _check_str(value: str, what: str) -> str:
    """``value`` unless it is not valid Unicode (a lone surrogate cannot be stored, nor
    handed to the catalog)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} {value!r} is not valid Unicode (a lone surrogate)") \
            from None
    return value


def _check_bool(value: object, what: str) -> bool:
    """``value`` if it is a bool (``$exists`` takes True or False)."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be True or False, got {value!r}")
    return value


def _check_list(value: object, what: str) -> list[Any]:
    """``value`` as a list if it is a list or a tuple (``$in`` and ``$nin`` take one)."""
    if not isinstance(value, (list, tuple)):
        raise InvalidInput(f"{what} must be a list, got {type(value).__name__}")
    return list(value)


def _join(parts: list[Sql], sep: str, empty: str) -> Sql:
    """``parts`` joined by ``sep`` (each in parentheses), or ``empty`` when there are none."""
    if not parts:
        return empty, []
    if len(parts) == 1:
        return parts[0]
    params: list[Any] = []
    for _, p in parts:
        params.extend(p)
    return sep.join(f"({sql})" for sql, _ in parts), params
