"""
What several SlaveAPI instances sharing one database agree on.

One instance alone (the SQLite store) needs none of this: its processor's
own per-machine locks and single-flight table are the whole truth. Several
instances on one PostgreSQL database (L{slaveapi.postgres}) must agree on
more, and L{ICluster} is that surface, as the processor uses it:

  - a new request either gets a fresh request id or, for a single-flight
    action already pending or running through any instance, joins that one
    (L{ICluster.create});
  - a machine's lock is held cluster-wide while an exclusive action runs on
    it (L{ICluster.lock}, L{ICluster.unlock});
  - a change another instance made to a result is announced here
    (L{ICluster.follow}), so that a waiter or an event stream on this
    instance learns of it without polling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from slaveapi.results import ActionResult


def interrupted_by_loss_text(instance: str, progress: str) -> str:
    """The text of a result whose instance stopped heartbeating while it ran."""
    text = f"Interrupted: instance {instance} stopped while it ran"
    return f"{text}; progress so far:\n{progress}" if progress else f"{text}."


@dataclass(frozen=True)
class Created:
    """
    What a request became: a new result (C{joined} false), or the pending or
    running result of the same single-flight action on the same machine that
    another request, through any instance, made first.
    """

    result: ActionResult
    joined: bool


@dataclass(frozen=True)
class ResultChange:
    """
    A result another instance wrote: its request id, its state after the
    write, and which instance wrote it.
    """

    requestid: int
    state: int
    instance: str


class ICluster(Interface):
    """The agreements between instances sharing one database (see the module docstring)."""

    instance = Attribute("This instance's name, unique among the instances sharing the database.")

    def create(
        slave: str, action: str, client: str | None, fields: Mapping[str, str], single_flight: bool
    ) -> Deferred[Created]:
        """
        Record a new PENDING result run by this instance, or, when
        C{single_flight} and the same action is pending or running on
        C{slave} (its canonical identity, compared case-insensitively), that
        result. Fails with L{slaveapi.store.StoreUnavailable}.
        """

    def lock(machine: str, requestid: int) -> Deferred[None]:
        """
        Fires once request C{requestid} holds C{machine}'s lock across every
        instance; waits while another request holds it. Cancelling it gives
        up the wait (and the lock, if it was just taken). Fails with
        L{slaveapi.store.ResultTakenOver} when the request is no longer this
        instance's (another took it over): it must not run here.
        """

    def unlock(machine: str, requestid: int) -> Deferred[None]:
        """Give up C{machine}'s lock if C{requestid} holds it; the next waiter, on any instance, is told."""

    def follow(changed: Callable[[ResultChange], None]) -> None:
        """Call C{changed} for each result another instance creates or writes, from now on."""
