"""The throwaway PostgreSQL server the store's tests run against: it answers, gives separate databases, and stops."""

from __future__ import annotations

import os

import psycopg
import pytest

from slaveapi.testing import ThrowawayPostgres

_CONNECT_TIMEOUT = 10


def _query(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT) as connection:
        return connection.execute(query).fetchall()


def _user_tables(url: str) -> list[tuple[object, ...]]:
    return _query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")


def test_server_answers(postgres_server: ThrowawayPostgres) -> None:
    assert postgres_server.host == "127.0.0.1"
    assert postgres_server.database == "slaveapi"
    assert postgres_server.url() == postgres_server.url("slaveapi")
    assert _query(postgres_server.url(), "SELECT 1") == [(1,)]
    assert _query(postgres_server.url(), "SHOW server_encoding") == [("UTF8",)]


def test_password_is_not_in_repr(postgres_server: ThrowawayPostgres) -> None:
    assert postgres_server.password not in repr(postgres_server)


def test_two_urls_are_different_empty_databases(postgres_server: ThrowawayPostgres, postgres_url: str) -> None:
    other_url = postgres_server.create_database("t_other")
    assert other_url != postgres_url
    assert _user_tables(postgres_url) == []
    assert _user_tables(other_url) == []
    with psycopg.connect(postgres_url, connect_timeout=_CONNECT_TIMEOUT) as connection:
        connection.execute("CREATE TABLE mine (x integer)")
    assert _user_tables(postgres_url) == [("mine",)]
    assert _user_tables(other_url) == []
    assert _query(other_url, "SELECT current_database()") == [("t_other",)]


def test_create_database_refuses_odd_names(postgres_server: ThrowawayPostgres) -> None:
    with pytest.raises(ValueError):
        postgres_server.create_database('x"; DROP DATABASE slaveapi; --')


def test_stop_ends_the_server(postgres_server: ThrowawayPostgres, tmp_path: object) -> None:
    """A server of its own: the session's one serves the other tests."""
    server = ThrowawayPostgres.start(str(tmp_path))
    # A client left connected does not hold up the (fast) shutdown.
    connection = psycopg.connect(server.url(), connect_timeout=_CONNECT_TIMEOUT)
    try:
        assert connection.execute("SELECT 1").fetchall() == [(1,)]
        server.stop()
    finally:
        connection.close()
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    server.stop()
    assert _query(postgres_server.url(), "SELECT 1") == [(1,)]
