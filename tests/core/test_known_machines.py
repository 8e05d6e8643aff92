"""
Which names are machines SlaveAPI knows, and their canonical identity and
FQDN (L{slaveapi.machines.identify}), with slavealloc and devices.json faked;
and the configuration keys that shape it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from slaveapi.clients.http import RemoteError
from slaveapi.config import AWSConfig, ConfigError, load_config
from slaveapi.context import Context
from slaveapi.machines import (
    IdentificationFailed,
    KnownMachine,
    UnknownMachine,
    canonical_name,
    identify,
    identify_loaner,
)

from .conftest import make_config
from .fake_fleet import fake_clients

_EXAMPLE_INI = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "slaveapi.ini")


def _ctx(names: tuple[str, ...] = ("bld-1", "Panda-Board-2"), devices: tuple[str, ...] = ("panda-0008",)) -> Any:
    config = make_config()
    config = dataclasses.replace(config, aws=AWSConfig(build_domain="build.aws.test", test_domain="test.aws.test"))
    return Context(config=config, clients=fake_clients(names, devices), reactor=Clock())


@pytest_twisted.ensureDeferred
async def test_slavealloc_names_in_any_case_short_or_in_the_default_domain() -> None:
    ctx = _ctx()
    for asked in ("bld-1", "BLD-1", "bld-1.example.test", "Bld-1.Example.Test"):
        machine = await identify(ctx, asked)
        assert (machine.name, machine.fqdn, machine.known_by, machine.loaner) == (
            "bld-1", "bld-1.example.test", "slavealloc", None
        )
    assert ctx.clients.slavealloc.asked == ["bld-1"] * 4
    # The canonical identity is slavealloc's own name, lower-cased.
    assert (await identify(ctx, "panda-board-2")).name == "panda-board-2"


@pytest_twisted.ensureDeferred
async def test_a_known_short_name_in_another_domain_is_unknown() -> None:
    ctx = _ctx()
    for asked in ("bld-1.other.example", "bld-1.example.test.evil.example", "bld-1.build.aws.test"):
        with pytest.raises(UnknownMachine) as unknown:
            await identify(ctx, asked)
        assert str(unknown.value) == (
            f"no machine named {asked} is known to slavealloc, devices or the loaner patterns"
        )
    # Looked up as the short name only in a configured domain (which then is not bld-1's).
    assert ctx.clients.slavealloc.asked == ["bld-1.other.example", "bld-1.example.test.evil.example", "bld-1"]


@pytest_twisted.ensureDeferred
async def test_addresses_and_unknown_names_are_unknown_after_slavealloc_and_devices() -> None:
    ctx = _ctx()
    for asked in ("10.1.2.3", "wpad", "nosuch-host-001"):
        with pytest.raises(UnknownMachine):
            await identify(ctx, asked)
    assert ctx.clients.slavealloc.asked == ["10.1.2.3", "wpad", "nosuch-host-001"]
    assert ctx.clients.devices.asked == ["10.1.2.3", "wpad", "nosuch-host-001"]


@pytest_twisted.ensureDeferred
async def test_loaner_names_are_known_in_their_own_domain() -> None:
    ctx = _ctx()
    build = await identify(ctx, "dev-linux64-ec2-jdoe")
    assert build == KnownMachine("dev-linux64-ec2-jdoe", "dev-linux64-ec2-jdoe.build.aws.test", "loaner", "build")
    test = await identify(ctx, "TST-linux32-ec2-jdoe7.test.aws.test")
    assert (test.name, test.fqdn, test.loaner) == (
        "tst-linux32-ec2-jdoe7", "tst-linux32-ec2-jdoe7.test.aws.test", "test"
    )
    assert ctx.clients.devices.asked == []
    for asked in ("dev-linux64-ec2-jdoe.example.test", "dev-linux64-ec2-jdoe.test.aws.test"):
        with pytest.raises(UnknownMachine):
            await identify(ctx, asked)
    assert identify_loaner(ctx.config, "dev-linux64-ec2-x") == KnownMachine(
        "dev-linux64-ec2-x", "dev-linux64-ec2-x.build.aws.test", "loaner", "build"
    )
    for asked in ("wpad", "bld-1", "dev-linux64-ec2-x.example.test"):
        with pytest.raises(UnknownMachine):
            identify_loaner(ctx.config, asked)


@pytest_twisted.ensureDeferred
async def test_devices_only_devices_json_knows_are_machines() -> None:
    ctx = _ctx(names=())
    device = await identify(ctx, "panda-0008.example.test")
    assert (device.name, device.fqdn, device.known_by) == ("panda-0008", "panda-0008.example.test", "devices")
    assert device.device is not None and device.device.foopy == "foopy-1"


@pytest_twisted.ensureDeferred
async def test_a_failing_slavealloc_is_not_taken_for_an_unknown_machine() -> None:
    ctx = _ctx()

    async def broken(name: str) -> None:
        raise RemoteError("slavealloc", "GET", "http://127.0.0.1:1/slavealloc/slaves/bld-1", "timed out after 30s")

    ctx.clients.slavealloc.get_slave = broken
    with pytest.raises(IdentificationFailed) as failed:
        await identify(ctx, "bld-1")
    assert str(failed.value).startswith("could not check that bld-1 is a known machine: ")
    assert "timed out after 30s" in str(failed.value)


def test_results_are_read_by_the_canonical_name_without_any_lookup() -> None:
    config = _ctx().config
    assert canonical_name(config, "BLD-1.example.test") == "bld-1"
    assert canonical_name(config, "dev-linux64-ec2-x.build.aws.test") == "dev-linux64-ec2-x"
    assert canonical_name(config, "bld-1.other.example") == "bld-1.other.example"
    assert canonical_name(config, "10.1.2.3") == "10.1.2.3"


def _ini_with(tmp_path: Any, section: str, lines: str) -> str:
    with open(_EXAMPLE_INI, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1)
    examples = os.path.dirname(os.path.abspath(_EXAMPLE_INI))
    text = text.replace("credentials_file = ", f"credentials_file = {examples}/", 1)
    path = tmp_path / "slaveapi.ini"
    path.write_text(_without_keys(text, section, lines))
    return str(path)


def _without_keys(text: str, section: str, lines: str) -> str:
    """The ini with any later copy of the keys in C{lines} taken out of C{section}."""
    keys = {line.split("=")[0].strip() for line in lines.splitlines() if "=" in line}
    out, current, seen = [], None, set()
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]")
        key = line.split("=")[0].strip() if "=" in line and not stripped.startswith(("#", ";")) else None
        if current == section and key in keys:
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return "".join(out)


def test_loaner_patterns_and_queue_keys_load(tmp_path: Any) -> None:
    config = load_config(
        _ini_with(tmp_path, "aws", "build_loaner_names = dev-*-ec2-*, BLD-loaner-?\ntest_loaner_names =")
    )
    assert config.aws.build_loaner_names == ("dev-*-ec2-*", "bld-loaner-?")
    assert config.aws.test_loaner_names == ()
    config = load_config(_ini_with(tmp_path, "server", "concurrency = 10\nread_concurrency = 7\nmax_queued = 20"))
    assert (config.server.concurrency, config.server.read_concurrency, config.server.max_queued) == (10, 7, 20)


@pytest.mark.parametrize(
    "section, lines, message",
    [
        ("aws", "build_loaner_names = *", "[aws] build_loaner_names: expected short-name patterns"),
        ("aws", "test_loaner_names = tst.*", "[aws] test_loaner_names: expected short-name patterns"),
        (
            "server",
            "concurrency = 4\nread_concurrency = 5",
            "[server] read_concurrency: expected an integer from 1 to concurrency (4), got '5'",
        ),
        ("server", "max_queued = 0", "[server] max_queued: expected an integer >= 1, got '0'"),
    ],
)
def test_bad_pattern_and_queue_keys_are_refused(tmp_path: Any, section: str, lines: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_ini_with(tmp_path, section, lines))
    assert message in str(refused.value)
