"""The lab's command-line options: the health interval it writes into the ini is one SlaveAPI accepts."""

from __future__ import annotations

import pytest
from twisted.python import usage

from slaveapi.lab.__main__ import _arguments


@pytest.mark.parametrize("value", ["0", "1", "2.5", "300"])
def test_python_m_slaveapi_lab_takes_0_or_at_least_1(value: str) -> None:
    assert _arguments(["--health-interval", value]).health_interval == float(value)


@pytest.mark.parametrize("value", ["0.5", "-1", "nan"])
def test_python_m_slaveapi_lab_refuses_other_health_intervals(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _arguments(["--health-interval", value])
    assert exited.value.code == 2
    assert "--health-interval must be 0 (no health loop) or at least 1, got " in capsys.readouterr().err


def _plugin_options(*argv: str) -> usage.Options:
    from twisted.plugins.slaveapi_plugin import Options

    options = Options()
    options.parseOptions(["--lab", "3", *argv])
    return options


@pytest.mark.parametrize("value", ["0", "1", "20"])
def test_twistd_lab_takes_0_or_at_least_1(value: str) -> None:
    assert _plugin_options("--lab-health-interval", value)["lab-health-interval"] == float(value)


@pytest.mark.parametrize("value", ["0.5", "-2", "nan"])
def test_twistd_lab_refuses_other_health_intervals(value: str) -> None:
    with pytest.raises(usage.UsageError, match="--lab-health-interval must be 0 \\(no health loop\\) or at least 1"):
        _plugin_options("--lab-health-interval", value)


def test_twistd_lab_health_interval_defaults_to_20() -> None:
    assert _plugin_options()["lab-health-interval"] == 20.0
