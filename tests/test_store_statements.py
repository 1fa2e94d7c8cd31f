"""The stores' SQL, written once: each statement rendered for SQLite and for PostgreSQL
takes the same parameters, in each database's own placeholders, with no template word
left over. (What the statements do is held by the store contract suite.)"""

from __future__ import annotations

import re

import pytest
from dispatchlet.scheduler.store.statements import (
    POSTGRES,
    SQLITE,
    PostgresStatements,
    Statements,
)

SHARED = {name for name, value in vars(Statements(SQLITE)).items() if isinstance(value, str)}


def parameters_sqlite(text: str) -> set[str]:
    return set(re.findall(r"(?<![:\w]):([a-z_]+)", text))


def parameters_postgres(text: str) -> set[str]:
    return set(re.findall(r"%\(([a-z_]+)\)b", text))


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_shared_statement_takes_the_same_parameters_in_both_databases(name: str) -> None:
    sqlite_text = getattr(Statements(SQLITE), name)
    postgres_text = getattr(PostgresStatements(), name)
    assert "{" not in sqlite_text
    assert "{" not in postgres_text
    # Parameters by name only: a positional one would not be bound.
    assert "%" not in sqlite_text, sqlite_text
    assert "?" not in sqlite_text + postgres_text
    assert not re.search(r"%[^(]", postgres_text), postgres_text
    assert not parameters_sqlite(postgres_text), postgres_text
    assert parameters_sqlite(sqlite_text) == parameters_postgres(postgres_text)


def test_postgresql_casts_are_not_taken_for_parameters() -> None:
    text = POSTGRES.render("SELECT * FROM unnest(:ids::text[]) WHERE x = :now")
    assert text == "SELECT * FROM unnest(%(ids)b::text[]) WHERE x = %(now)b"


def test_a_migration_is_written_once_in_each_databases_words() -> None:
    change = "ALTER TABLE {calls} ADD COLUMN started_at {double}; -- {blob} {empty} {true}"
    assert SQLITE.render(change) == ("ALTER TABLE calls ADD COLUMN started_at REAL; -- BLOB x'' 1")
    assert POSTGRES.render(change) == (
        "ALTER TABLE dispatchlet_calls ADD COLUMN started_at DOUBLE PRECISION; -- BYTEA '' TRUE"
    )


def listed(statements: Statements) -> tuple[str, dict[str, object]]:
    """The list query of done calls of ``f`` that failed, newest first after ``x``."""
    return statements.list(
        state="done",
        function="f",
        root_id=None,
        status=None,
        failed=True,
        newest_first=True,
        after="x",
        limit=10,
    )


def test_a_list_query_pages_by_each_databases_creation_order() -> None:
    sqlite_query, sqlite_params = listed(Statements(SQLITE))
    postgres_query, postgres_params = listed(PostgresStatements())
    assert "ORDER BY rowid DESC" in sqlite_query
    assert "(rowid) < (SELECT rowid" in sqlite_query
    assert "ORDER BY seq DESC" in postgres_query
    assert "(seq) < (SELECT seq" in postgres_query
    # The OK status is written out, as the partial index of failed calls says it.
    assert "status <> 1" in sqlite_query
    assert "status <> 1" in postgres_query
    expected = {"state": "done", "function": "f", "after": "x", "limit": 10}
    assert sqlite_params == expected
    assert postgres_params == expected
    assert parameters_sqlite(sqlite_query) == set(sqlite_params)
    assert parameters_postgres(postgres_query) == set(postgres_params)
