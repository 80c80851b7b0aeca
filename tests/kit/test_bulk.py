"""loyalty_kit.bulk: multi-row inserts through unnest, against a real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import pytest
from loyalty_kit.bulk import BulkSqlError, column_arrays, insert_rows, insert_statement, typed_columns

AT = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
COLUMNS = [("event_id", "text"), ("score", "smallint"), ("at", "timestamptz"), ("note", "text")]


@pytest.fixture
async def conn(kit_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(kit_db)
    await connection.execute(
        "CREATE TABLE rejections (tenant text NOT NULL, event_id text NOT NULL, score smallint NOT NULL, "
        "at timestamptz NOT NULL, note text, seen int NOT NULL DEFAULT 1, PRIMARY KEY (tenant, event_id))"
    )
    try:
        yield connection
    finally:
        await connection.close()


def test_the_statement_has_constants_first_then_one_array_per_column() -> None:
    sql = insert_statement(
        "rejections", COLUMNS[:2], constants=[("tenant", "text")], on_conflict="DO NOTHING", returning=["event_id"]
    )
    assert sql == (
        'INSERT INTO "rejections" ("tenant", "event_id", "score") '
        'SELECT $1::text, u."event_id", u."score" FROM unnest($2::text[], $3::smallint[]) AS u("event_id", "score") '
        'ON CONFLICT DO NOTHING RETURNING "event_id"'
    )


def test_schema_qualified_tables_and_types_with_modifiers_are_accepted() -> None:
    sql = insert_statement("kit.things", [("amount", "numeric(12,2)"), ("ratio", "double precision")])
    assert sql.startswith('INSERT INTO "kit"."things" ("amount", "ratio")')
    assert "unnest($1::numeric(12,2)[], $2::double precision[])" in sql


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("rejections; DROP TABLE x", [("a", "text")], "table 'rejections; DROP TABLE x'"),
        ("a.b.c", [("a", "text")], "more than one dot"),
        ("rejections", [('a" text', "text")], "column 'a\" text'"),
        ("rejections", [("Event", "text")], "column 'Event'"),
        ("rejections", [("a", "text); DROP TABLE x; --")], "is not a plain Postgres type"),
        ("rejections", [("a", "text"), ("a", "int")], "names a column twice"),
        ("rejections", [], "names no columns"),
    ],
)
def test_names_and_types_that_are_not_plain_are_refused(
    table: str, columns: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(BulkSqlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        insert_statement(table, columns)


def test_columns_can_be_written_as_in_create_table() -> None:
    assert typed_columns("tenant text, score  smallint,at timestamptz") == (
        ("tenant", "text"),
        ("score", "smallint"),
        ("at", "timestamptz"),
    )
    assert typed_columns("amount numeric(12, 2), ratio double precision") == (
        ("amount", "numeric(12, 2)"),
        ("ratio", "double precision"),
    )
    assert insert_statement("t", typed_columns("amount numeric(12, 2)")).endswith(
        'unnest($1::numeric(12, 2)[]) AS u("amount")'
    )
    with pytest.raises(BulkSqlError, match="column 'score' in 'tenant text, score' is not 'name type'"):
        typed_columns("tenant text, score")
    with pytest.raises(BulkSqlError, match="column '' in"):
        typed_columns("tenant text,")


def test_the_conflict_clause_is_what_follows_on_conflict() -> None:
    with pytest.raises(BulkSqlError, match="what follows ON CONFLICT"):
        insert_statement("rejections", COLUMNS, on_conflict="ON CONFLICT DO NOTHING")


def test_rows_become_column_arrays_and_a_short_row_is_named() -> None:
    assert column_arrays([("a", 1), ("b", 2)], 2) == [["a", "b"], [1, 2]]
    assert column_arrays([], 3) == [[], [], []]
    with pytest.raises(BulkSqlError, match="row 1 has 1 values, the statement has 2 columns"):
        column_arrays([("a", 1), ("b",)], 2)


async def test_rows_are_inserted_with_their_types_nulls_and_the_shared_constant(conn: asyncpg.Connection) -> None:
    rows: list[tuple[Any, ...]] = [("e1", 3, AT, None), ("e2", -2, AT, "late")]
    assert await insert_rows(conn, "rejections", COLUMNS, rows, constants={"tenant": ("text", "acme")}) == []
    stored = await conn.fetch("SELECT tenant, event_id, score, at, note, seen FROM rejections ORDER BY event_id")
    assert [tuple(r) for r in stored] == [("acme", "e1", 3, AT, None, 1), ("acme", "e2", -2, AT, "late", 1)]


async def test_on_conflict_and_returning_report_only_the_rows_inserted_now(conn: asyncpg.Connection) -> None:
    tenant = {"tenant": ("text", "acme")}
    await insert_rows(conn, "rejections", COLUMNS, [("e1", 1, AT, None)], constants=tenant)
    new = await insert_rows(
        conn,
        "rejections",
        COLUMNS,
        [("e1", 9, AT, "again"), ("e2", 2, AT, None)],
        constants=tenant,
        on_conflict="DO NOTHING",
        returning=["tenant", "event_id"],
    )
    assert [(r["tenant"], r["event_id"]) for r in new] == [("acme", "e2")]
    assert await conn.fetchval("SELECT score FROM rejections WHERE event_id = 'e1'") == 1  # left alone

    await insert_rows(
        conn,
        "rejections",
        COLUMNS,
        [("e1", 5, AT, "updated")],
        constants=tenant,
        on_conflict="(tenant, event_id) DO UPDATE SET score = EXCLUDED.score, seen = rejections.seen + 1",
    )
    assert tuple(await conn.fetchrow("SELECT score, seen FROM rejections WHERE event_id = 'e1'") or ()) == (5, 2)


async def test_without_a_conflict_clause_a_duplicate_fails_and_nothing_is_written(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert_rows(
            conn, "rejections", COLUMNS, [("e1", 1, AT, None), ("e1", 2, AT, None)], constants={"tenant": ("text", "t")}
        )
    assert await conn.fetchval("SELECT count(*) FROM rejections") == 0


async def test_no_rows_make_no_round_trip() -> None:
    class NoConnection:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"an empty insert used the connection ({name})")

    assert await insert_rows(cast(asyncpg.Connection, NoConnection()), "rejections", COLUMNS, []) == []


async def test_a_row_of_the_wrong_width_is_refused_before_the_database(conn: asyncpg.Connection) -> None:
    with pytest.raises(BulkSqlError, match="row 0 has 3 values"):
        await insert_rows(conn, "rejections", COLUMNS, [("e1", 1, AT)], constants={"tenant": ("text", "t")})
    assert await conn.fetchval("SELECT count(*) FROM rejections") == 0
