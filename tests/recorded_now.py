"""
What a processor shows of a result, read at once: for tests on the SQLite
store, whose reads answer without waiting (L{slaveapi.store.SynchronousReads}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from slaveapi.processor import ActionProcessor
from slaveapi.results import ActionResult


def recorded_now(processor: ActionProcessor, result: ActionResult) -> ActionResult:
    """C{processor.recorded(result)}, which on the SQLite store has its answer before it returns."""
    reading = Deferred.fromCoroutine(processor.recorded(result))
    answers: list[ActionResult] = []
    reading.addCallback(answers.append)
    assert answers, "the store's read did not answer at once"  # a test helper
    return answers[0]
