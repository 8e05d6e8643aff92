"""ActionResult and dictify_results keep the reference documentation's shapes."""

from slaveapi.results import FAILURE, SUCCESS, ActionResult, dictify_results


def test_to_dict_has_the_reference_keys() -> None:
    result = ActionResult(
        "linux-ix-slave04", "reboot", 234567832, SUCCESS, "Great success!", 1392414314, 1392414315, 1392414316
    )
    assert result.to_dict() == {
        "state": 2,
        "text": "Great success!",
        "request_timestamp": 1392414314,
        "start_timestamp": 1392414315,
        "finish_timestamp": 1392414316,
    }
    assert result.to_dict(include_requestid=True)["requestid"] == 234567832


def test_dictify_nests_by_slave_action_and_requestid() -> None:
    ok = ActionResult("linux-ix-slave04", "reboot", 1235543252, SUCCESS, "Great success!", 1, 2, 3)
    bad = ActionResult("w64-ix-slave05", "reboot", 5748263211, FAILURE, "Failure :(", 4, 5, 6)
    assert dictify_results([ok, bad]) == {
        "linux-ix-slave04": {"reboot": {"1235543252": ok.to_dict()}},
        "w64-ix-slave05": {"reboot": {"5748263211": bad.to_dict()}},
    }
