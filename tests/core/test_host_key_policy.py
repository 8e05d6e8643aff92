"""
C{[ssh] host_keys}: C{strict} by default, and C{off} only with C{--lab}, at
start-up and on a reload alike.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from slaveapi.config import ConfigError, check_host_key_policy, load_config
from slaveapi.service import ContextHolder, ServiceOptions, StartupError, make_service

reactor: Any = _reactor

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _config_dir(tmp_path: Path, host_keys: str | None) -> Path:
    """The example configuration, with C{host_keys} set (or its line dropped for the default)."""
    shutil.copytree(EXAMPLES, tmp_path / "conf")
    ini = tmp_path / "conf" / "slaveapi.ini"
    lines = ini.read_text().splitlines(True)
    replaced = [
        (f"host_keys = {host_keys}\n" if host_keys else "") if line.startswith("host_keys =") else line
        for line in lines
    ]
    ini.write_text("".join(replaced))
    return ini


def test_strict_is_the_default(tmp_path: Path) -> None:
    assert load_config(str(_config_dir(tmp_path, None))).ssh.host_keys == "strict"


@pytest.mark.parametrize("policy", ["strict", "tofu"])
def test_strict_and_tofu_are_accepted_anywhere(tmp_path: Path, policy: str) -> None:
    config = load_config(str(_config_dir(tmp_path, policy)))
    check_host_key_policy(config, lab=False)
    check_host_key_policy(config, lab=True)


def test_off_only_with_the_lab(tmp_path: Path) -> None:
    ini = _config_dir(tmp_path, "off")
    config = load_config(str(ini))
    check_host_key_policy(config, lab=True)
    with pytest.raises(ConfigError) as caught:
        check_host_key_policy(config, lab=False)
    assert str(caught.value) == (
        f"{ini}: [ssh] host_keys: off is accepted only with --lab (it offers passwords to any host);"
        " use strict or tofu"
    )
    with pytest.raises(StartupError) as refused:
        make_service(ServiceOptions(config=str(ini), data=str(tmp_path / "data")), reactor)
    assert str(refused.value) == str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_reload_to_off_is_refused_outside_the_lab(tmp_path: Path) -> None:
    ini = _config_dir(tmp_path, "strict")
    data = tmp_path / "data"
    os.makedirs(data)
    holder = ContextHolder(load_config(str(ini)), reactor, str(data))
    holder.startService()
    try:
        ini.write_text(ini.read_text().replace("host_keys = strict", "host_keys = off"))
        assert holder.reload() is False
        assert holder.context().config.ssh.host_keys == "strict"
    finally:
        await holder.stopService()
