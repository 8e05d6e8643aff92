"""Fixtures for the core tests: a store, a processor and configuration built in memory."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from slaveapi.config import (
    ApiToken,
    AuthConfig,
    BuildapiConfig,
    Config,
    Credentials,
    InventoryConfig,
    Secret,
    ServerConfig,
    ServiceURL,
    SlavesConfig,
)
from slaveapi.processor import ActionProcessor
from slaveapi.store import SQLiteResultStore


def make_config(tokens: dict[str, str | ApiToken] | None = None, protect_reads: bool = False) -> Config:
    """A configuration whose remote systems are never called; C{tokens} as strings have every scope."""
    return Config(
        path="/nonexistent/slaveapi.ini",
        server=ServerConfig(),
        slavealloc=ServiceURL("http://127.0.0.1:1/slavealloc"),
        inventory=InventoryConfig("http://127.0.0.1:1/inventory"),
        bugzilla=ServiceURL("http://127.0.0.1:1/bugzilla"),
        buildapi=BuildapiConfig("http://127.0.0.1:1/buildapi"),
        slaves=SlavesConfig(default_domain="example.test"),
        credentials=Credentials(
            ssh={},
            api_tokens={
                name: token if isinstance(token, ApiToken) else ApiToken(Secret(token))
                for name, token in (tokens or {}).items()
            },
        ),
        auth=AuthConfig(protect_reads=protect_reads),
    )


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Any) -> Any:
    from twisted.internet import reactor

    result_store = SQLiteResultStore(str(tmp_path / "results.sqlite"), reactor)
    result_store.open()
    yield result_store
    await result_store.close()


@pytest.fixture
def context_box() -> SimpleNamespace:
    """Holds the context the processor and the web app see; tests may replace .context."""
    # Imported here: the SSH client (which the fakes and the context bring in)
    # imports conch, which installs the default reactor, and this module is
    # loaded before pytest-twisted installs the asyncio one.
    from twisted.internet import reactor

    from slaveapi.context import Context

    from .fake_fleet import fake_clients

    return SimpleNamespace(context=Context(config=make_config(), clients=fake_clients(clock=reactor), reactor=reactor))


@pytest.fixture
def processor(store: Any, context_box: SimpleNamespace) -> ActionProcessor:
    from twisted.internet import reactor

    return ActionProcessor(store, lambda: context_box.context, concurrency=2, reactor=reactor)


@pytest.fixture
def clock() -> Clock:
    """A Clock well past zero, for processors, stores' timestamps and actions' waits."""
    clock = Clock()
    clock.advance(1_000_000)
    return clock


@pytest.fixture
def make_processor(store: Any, context_box: SimpleNamespace, clock: Clock) -> Callable[..., ActionProcessor]:
    """Builds processors on the shared store (or C{on}) and the C{clock}."""

    def make(
        concurrency: int = 2, timeouts: Callable[[], dict[str, float]] = dict, on: Any = None
    ) -> ActionProcessor:
        return ActionProcessor(
            on if on is not None else store,
            lambda: context_box.context,
            concurrency=concurrency,
            reactor=clock,
            timeouts=timeouts,
        )

    return make
