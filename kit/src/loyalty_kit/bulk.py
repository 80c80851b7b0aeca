"""Multi-row writes in one statement: ``INSERT INTO t (...) SELECT ... FROM unnest($n::type[], ...)``.

A batch handler writes a whole batch's rows per table with one round trip whatever the batch size; every
service did this by hand (one ``$n::type[]`` per column, one list comprehension per column). ``insert_rows``
builds the statement from (column, Postgres type) pairs (``typed_columns("a text, b timestamptz")`` writes them
as in a CREATE TABLE) and turns the rows into the column arrays.

Table, column and RETURNING names are validated and double-quoted; types are checked against a plain
type-name pattern (they cannot be quoted: ``"double precision"`` is not a type name). The ON CONFLICT tail
is SQL the caller writes (never data), passed through as it is.

(The module is not called ``sql``: ``loyalty_kit/sql/`` holds the kit's migration files.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import asyncpg

Column = tuple[str, str]  # (column name, Postgres type of one value, e.g. "timestamptz")

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# A type name with optional modifiers: text, timestamptz, smallint, double precision, numeric(12,2), varchar(40).
_TYPE = re.compile(r"[a-z_][a-z0-9_]*( [a-z_][a-z0-9_]*)*( ?\(\d+( ?, ?\d+)?\))?")


class BulkSqlError(ValueError):
    """A table, column or type name that is not a plain lower-case SQL name, or rows of the wrong width."""


def _quoted(name: str, what: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise BulkSqlError(f"{what} {name!r} is not a plain lower-case SQL name ([a-z_][a-z0-9_]*)")
    return f'"{name}"'


def _qualified(table: str) -> str:
    parts = table.split(".")
    if len(parts) > 2:
        raise BulkSqlError(f"table {table!r} has more than one dot (schema.table at most)")
    return ".".join(_quoted(p, "table") for p in parts)


def _type(pg_type: str, column: str) -> str:
    if not _TYPE.fullmatch(pg_type):
        raise BulkSqlError(f"column {column!r}: {pg_type!r} is not a plain Postgres type name")
    return pg_type


@lru_cache(maxsize=256)
def _statement(
    table: str,
    columns: tuple[Column, ...],
    constants: tuple[Column, ...],
    on_conflict: str,
    returning: tuple[str, ...],
) -> str:
    if not columns:
        raise BulkSqlError(f"insert into {table!r} names no columns")
    names = [_quoted(name, "column") for name, _ in (*constants, *columns)]
    if len(set(names)) != len(names):
        raise BulkSqlError(f"insert into {table!r} names a column twice: {[n for n, _ in (*constants, *columns)]}")
    selected = [f"${i}::{_type(t, name)}" for i, (name, t) in enumerate(constants, start=1)]
    arrays = [f"${i}::{_type(t, name)}[]" for i, (name, t) in enumerate(columns, start=len(constants) + 1)]
    unnested = names[len(constants) :]
    sql = (
        f"INSERT INTO {_qualified(table)} ({', '.join(names)}) "
        f"SELECT {', '.join([*selected, *(f'u.{n}' for n in unnested)])} "
        f"FROM unnest({', '.join(arrays)}) AS u({', '.join(unnested)})"
    )
    if on_conflict:
        if on_conflict.lstrip().upper().startswith("ON CONFLICT"):
            raise BulkSqlError("on_conflict is what follows ON CONFLICT, e.g. 'DO NOTHING' or '(a, b) DO UPDATE ...'")
        sql += f" ON CONFLICT {on_conflict}"
    if returning:
        sql += f" RETURNING {', '.join(_quoted(n, 'returned column') for n in returning)}"
    return sql


@lru_cache(maxsize=256)
def typed_columns(spec: str) -> tuple[Column, ...]:
    """``"tenant text, score smallint, at timestamptz"`` → ``(("tenant", "text"), ("score", "smallint"), ...)``:
    the column list written as in a CREATE TABLE. Commas inside a type's parentheses (``numeric(12,2)``) do
    not split. Names and types are checked when the statement is built."""
    parts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(spec):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(spec[start:index])
            start = index + 1
    parts.append(spec[start:])
    out: list[Column] = []
    for part in parts:
        words = part.split(maxsplit=1)
        if len(words) != 2:
            raise BulkSqlError(f"column {part.strip()!r} in {spec!r} is not 'name type'")
        out.append((words[0], " ".join(words[1].split())))
    return tuple(out)


def insert_statement(
    table: str,
    columns: Sequence[Column],
    *,
    constants: Sequence[Column] = (),
    on_conflict: str = "",
    returning: Sequence[str] = (),
) -> str:
    """The statement ``insert_rows`` runs: constants are ``$1..$k`` (one value each), then one array per column.

    Raises ``BulkSqlError`` for a name or type that is not plain, a repeated column, or no columns."""
    return _statement(table, tuple(columns), tuple(constants), on_conflict, tuple(returning))


def column_arrays(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows → one list per column (what ``unnest($1::t[], $2::t[], ...)`` takes). Every row must have
    ``width`` values; a row of another width raises ``BulkSqlError`` naming its index."""
    if set(map(len, rows)) - {width}:
        index, row = next((i, r) for i, r in enumerate(rows) if len(r) != width)
        raise BulkSqlError(f"row {index} has {len(row)} values, the statement has {width} columns")
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]  # zip in C: this runs per table per batch


async def insert_rows(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Any]],
    *,
    constants: Mapping[str, tuple[str, Any]] | None = None,
    on_conflict: str = "",
    returning: Sequence[str] = (),
) -> list[asyncpg.Record]:
    """Insert ``rows`` (values in ``columns`` order) into ``table`` in one statement.

    ``constants`` maps a column to ``(type, value)`` for a value every row shares (usually the tenant).
    ``on_conflict`` is the clause after ``ON CONFLICT`` (``"DO NOTHING"``, ``"(tenant, id) DO UPDATE SET
    ..."``). Returns the ``returning`` columns of the rows inserted (an empty list when ``returning`` is
    empty). No rows: no round trip, an empty list."""
    if not rows:
        return []
    fixed = dict(constants or {})
    sql = insert_statement(
        table,
        columns,
        constants=[(name, pg_type) for name, (pg_type, _) in fixed.items()],
        on_conflict=on_conflict,
        returning=returning,
    )
    args = [value for _, value in fixed.values()] + column_arrays(rows, len(columns))
    if returning:
        return list(await conn.fetch(sql, *args))
    await conn.execute(sql, *args)
    return []
