"""
The AWS actions: create a loaner instance, and start, stop or terminate an instance.

C{aws_start_instance}, C{aws_stop_instance} and C{aws_terminate_instance}
(routes C{start}, C{stop}, C{terminate}) find the instance whose C{Name} tag is
the slave's canonical name (not terminated; an C{FQDN} tag naming another
host than the slave's configured FQDN rules an instance out), refuse one
SlaveAPI does not manage (neither a loaner name nor loan tags), ask EC2 for
the change, and wait (bounded by C{[aws] state_timeout}, polled every
C{[aws] poll_interval}) for C{running}, C{stopped} or C{terminated}.
C{aws_create_instance} creates only names of the C{[aws]} loaner patterns
of its instance type, in that type's domain.

C{aws_create_instance} makes a loaner, each step shown in the progress text
and any failure naming its step::

    Checking that dev-linux64-ec2-jdoe is not taken...OK.
    Picking a free IP address in subnet-0abc...10.0.0.4.
    Creating DNS records for dev-linux64-ec2-jdoe.build.example -> 10.0.0.4...A and PTR created.
    Waiting for dev-linux64-ec2-jdoe.build.example to resolve...10.0.0.4.
    Launching dev-linux64-ec2-jdoe from ami-0123...i-0456.
    Waiting for i-0456 to be running...running.

The address is the first of the subnet not held by an instance (in any
state) or a network interface, not being claimed by another creation, and
without reverse DNS. The A and PTR records go through inventory's DNS API.
When a step fails, what was made is undone: a launched instance is
terminated and the DNS records are deleted. On success the payload is the
instance's tags plus C{ip} and C{instance_id}.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError

from slaveapi.actions._base import (
    LOANERS,
    Action,
    ActionFailure,
    ActionRun,
    ArgumentError,
    FormField,
    MissingArguments,
    StatusLines,
    StepFailed,
    failure_reason,
)
from slaveapi.clients import ClientError, poll_until
from slaveapi.clients.aws import AWSError, Instance, LaunchSpec
from slaveapi.clients.dns import DNSError
from slaveapi.clients.http import RemoteError
from slaveapi.clients.inventory import DNSRecord
from slaveapi.config import Config
from slaveapi.interfaces import AWSSpec
from slaveapi.machines import IdentificationFailed, UnknownMachine, identify, identify_loaner, loaner_type

#: The form fields of aws_create_instance.
CREATE_FIELDS = ("email", "bug", "instance_type", "arch", "disambig")
REQUIRED_FIELDS = ("email", "bug", "instance_type")
INSTANCE_TYPES = ("build", "test")
ARCHES = (32, 64)
#: The same fields, declared (L{FormField}) for the OpenAPI document and the history.
CREATE_FORM = (
    FormField("email", description="the loaner's owner, user@domain; the part before '@' names the loaner",
              required=True),
    FormField("bug", "integer", "the bug number the loaner is for, >= 1", required=True),
    FormField("instance_type", description="what the loaner is for", required=True, choices=INSTANCE_TYPES),
    FormField("arch", "integer", "64 (default) or 32; 32 only for test instances",
              choices=tuple(str(arch) for arch in ARCHES)),
    FormField("disambig", "integer", "a number >= 0 appended to a default name (slave 'default')"),
)

#: The slave name that asks for a name made from the email address.
DEFAULT_SLAVE = "default"

#: The tags aws_create_instance puts on every loaner it makes (with Name, FQDN,
#: moz-type, moz-state and created): an instance carrying them is SlaveAPI's.
LOAN_TAGS = ("moz-loaned-to", "moz-bug")

#: How many unused addresses are checked for reverse DNS before giving up.
MAX_ADDRESS_CANDIDATES = 64

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_MAX_LABEL = 63
_SHOWN = 40
_T = TypeVar("_T")
_STEP_ERRORS = (ActionFailure, ClientError)


# --- validating the request --------------------------------------------------------


def create_arguments(form: Mapping[str, str]) -> dict[str, Any]:
    """
    The keyword arguments of L{aws_create_instance} from a request's fields.

    @param form: every field the request carried (query and body), first value each.
    @raise ArgumentError: the message says what is wrong (the route answers it as a 400).
    """
    fields = {name: (form.get(name) or "").strip() for name in CREATE_FIELDS}
    missing = [name for name in REQUIRED_FIELDS if not fields[name]]
    if missing:
        received = ", ".join(f"{name}={_shown(value)}" for name, value in sorted(form.items())) or "nothing"
        raise MissingArguments(missing, REQUIRED_FIELDS, received)
    email = fields["email"]
    if not _EMAIL.match(email):
        raise ArgumentError("email", f"expected an email address (user@domain), got {_shown(email)}")
    if not nick_of(email):
        raise ArgumentError(
            "email", f"the part before '@' of {_shown(email)} gives no host name (letters, digits and '-')"
        )
    bug = fields["bug"]
    if not bug.isdigit() or not bug.isascii() or int(bug) < 1:
        raise ArgumentError("bug", f"expected a bug number, got {_shown(bug)}")
    instance_type = fields["instance_type"]
    if instance_type not in INSTANCE_TYPES:
        raise ArgumentError("instance_type", f"expected 'build' or 'test', got {_shown(instance_type)}")
    arch_text = fields["arch"] or "64"
    if arch_text not in ("32", "64"):
        raise ArgumentError("arch", f"expected 32 or 64, got {_shown(arch_text)}")
    arch = int(arch_text)
    if arch == 32 and instance_type == "build":
        raise ArgumentError("arch", "32bit instances are not used for building")
    disambig_text = fields["disambig"]
    disambig = None
    if disambig_text:
        if not disambig_text.isdigit() or not disambig_text.isascii():
            raise ArgumentError("disambig", f"expected a non-negative integer, got {_shown(disambig_text)}")
        disambig = int(disambig_text)
    return {"email": email, "bug": int(bug), "instance_type": instance_type, "arch": arch, "disambig": disambig}


def _shown(value: str) -> str:
    """A field's value as an error message quotes it (shortened)."""
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def nick_of(email: str) -> str:
    """The part of C{email} before C{@}, made a host name label: C{John.Doe@x} -> C{john-doe}."""
    local = email.split("@", 1)[0].lower()
    return _NOT_LABEL.sub("-", local).strip("-")


def loaner_name(slave: str, instance_type: str, arch: int, nick: str, disambig: int | None) -> str:
    """
    The short name of the instance to create.

    C{default} becomes C{dev-linux64-ec2-<nick>} (build) or
    C{tst-linux<arch>-ec2-<nick>} (test), with C{disambig} appended; any
    other slave name is used as given (its first label).
    """
    if slave != DEFAULT_SLAVE:
        return slave.split(".", 1)[0]
    prefix = "dev-linux64" if instance_type == "build" else f"tst-linux{arch}"
    return f"{prefix}-ec2-{nick}{'' if disambig is None else disambig}"


# --- start, stop, terminate ----------------------------------------------------------


async def _the_instance(run: ActionRun) -> Instance:
    """
    The one live instance of the slave that SlaveAPI manages, or an
    L{ActionFailure} saying why not.

    It is found by its C{Name} tag (the slave's name), and an C{FQDN} tag
    naming another host than the slave's configured FQDN rules it out.
    """
    try:
        machine = await identify(run.ctx, run.slave)
    except UnknownMachine as unknown:
        raise ActionFailure(f"Instance '{run.slave}': {unknown}.") from None
    except IdentificationFailed as error:
        raise ActionFailure(f"Instance '{run.slave}': {error}.") from None
    try:
        found = await run.ctx.clients.aws.find_instances(machine.fqdn)
    except AWSError as error:
        raise ActionFailure(f"Looking up instance '{run.slave}' failed: {error}") from None
    if not found:
        raise ActionFailure(f"Instance '{run.slave}' could not be found. Does it exist?")
    if len(found) > 1:
        listed = ", ".join(f"{i.instance_id} ({i.state})" for i in found)
        raise ActionFailure(f"Instance '{run.slave}' is ambiguous: {len(found)} instances have that name: {listed}")
    instance = found[0]
    if not is_managed(run.ctx.config, instance):
        raise ActionFailure(
            f"Instance '{run.slave}' ({instance.instance_id}) is not managed by SlaveAPI: its name matches no "
            f"[aws] loaner names and it has no loan tags ({', '.join(LOAN_TAGS)}). Nothing was changed."
        )
    return instance


def is_managed(config: Config, instance: Instance) -> bool:
    """Whether SlaveAPI may start, stop or terminate C{instance}: a loaner's name, or its loan tags."""
    if instance.name and loaner_type(config, instance.name):
        return True
    return all(instance.tags.get(tag) for tag in LOAN_TAGS)


async def _change_state(
    run: ActionRun,
    verb: str,
    request: Callable[[AWSSpec, str], Awaitable[str]],
    target: str,
    success: str,
) -> str:
    aws = run.ctx.clients.aws
    instance = await _the_instance(run)
    ident = instance.instance_id
    run.log.info("{verb} {instance_id} (now {state})", verb=verb, instance_id=ident, state=instance.state)
    run.progress(f"Instance '{run.slave}' is {ident} ({instance.state}). Asking EC2 to {verb.lower()} it...")
    try:
        answered = await request(aws, ident)
    except AWSError as error:
        raise ActionFailure(f"Instance '{run.slave}' ({ident}) could not be {_past(verb)}: {error}") from None
    run.progress(
        f"Instance '{run.slave}' is {ident} ({instance.state}). Asking EC2 to {verb.lower()} it...{answered}.\n"
        f"Waiting for it to be {target}..."
    )
    try:
        final = await aws.wait_for_state(ident, target)
    except AWSError as error:
        raise ActionFailure(f"Instance '{run.slave}' ({ident}) did not become {target}: {error}") from None
    if target == "terminated":
        # Its address and name will serve other machines, with other host keys.
        for host in (instance.private_ip, instance.tags.get("FQDN")):
            if host:
                run.ctx.clients.ssh.forget_host(host)
    return f"Instance '{run.slave}' {success} (state: {final.state})"


def _past(verb: str) -> str:
    return {"Start": "started", "Stop": "stopped", "Terminate": "terminated"}[verb]


async def aws_start_instance(run: ActionRun) -> str:
    """Start the slave's instance and wait until it runs."""
    return await _change_state(run, "Start", lambda aws, ident: aws.start(ident), "running", "starting")


async def aws_stop_instance(run: ActionRun) -> str:
    """Stop the slave's instance and wait until it is stopped."""
    return await _change_state(run, "Stop", lambda aws, ident: aws.stop(ident), "stopped", "stopping")


async def aws_terminate_instance(run: ActionRun) -> str:
    """Terminate the slave's instance and wait until it is gone."""
    return await _change_state(
        run, "Terminate", lambda aws, ident: aws.terminate(ident), "terminated", "has been terminated"
    )


# --- create ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loaner:
    """The loaner a creation makes: who it is for, and its names."""

    email: str
    bug: int
    instance_type: str
    arch: int
    nick: str
    name: str
    fqdn: str

    @property
    def moz_type(self) -> str:
        return "dev-linux64" if self.instance_type == "build" else f"tst-linux{self.arch}"


def _step_failed(error: BaseException) -> str:
    """How a creation step says it failed: C{Failed: <why>.}"""
    return f"Failed: {failure_reason(error).rstrip('.')}."


class _Creation(StatusLines):
    """
    The progress text of one creation, its steps, and what it made (to
    undo on failure). A failed step raises L{StepFailed}.
    """

    def __init__(self, run: ActionRun) -> None:
        super().__init__(run)
        self.run = run
        self.records: list[DNSRecord] = []
        self.instance: Instance | None = None
        #: The launched instance as it was once running.
        self.running: Instance | None = None
        self.ip: str | None = None
        #: The name a launch was attempted under: a launch whose answer never
        #: came may still have started an instance.
        self.launching: str | None = None

    async def _step(self, heading: str, work: Callable[[], Awaitable[str]]) -> None:
        await self.step(heading, work, failures=_STEP_ERRORS, failed=_step_failed)

    async def create(self, loaner: _Loaner) -> dict[str, str]:
        """Run every step; the payload of a created loaner."""
        subnet_id = self.run.ctx.config.aws.subnet_id
        await self._step(f"Checking that {loaner.name} is not taken", partial(self._not_taken, loaner))
        await self._step(f"Picking a free IP address in {subnet_id or 'the subnet'}", self._pick_address)
        ip = _made(self.ip, "an address")
        await self._step(f"Creating DNS records for {loaner.fqdn} -> {ip}", partial(self._make_records, loaner, ip))
        await self._step(f"Waiting for {loaner.fqdn} to resolve", partial(self._resolves, loaner.fqdn, ip))
        spec, source = _launch_spec(self.run, loaner, ip)
        await self._step(f"Launching {loaner.name} from {source}", partial(self._launch, loaner, spec))
        launched = _made(self.instance, "an instance")
        await self._step(f"Waiting for {launched.instance_id} to be running", partial(self._running, launched))
        running = _made(self.running, "a running instance")
        self.run.log.info(
            "Created {name} as {instance_id} at {ip}", name=loaner.name, instance_id=launched.instance_id, ip=ip
        )
        payload = dict(running.tags) or dict(spec.tags)
        payload.update({"ip": ip, "instance_id": launched.instance_id})
        return payload

    async def _not_taken(self, loaner: _Loaner) -> str:
        # Any live instance of that Name conflicts, whatever its FQDN tag: start,
        # stop and terminate find instances by Name.
        existing = await self.run.ctx.clients.aws.find_instances(loaner.name)
        if existing:
            raise ActionFailure(
                f"Instance '{loaner.name}' already exists ({existing[0].instance_id}, {existing[0].state})"
            )
        known = await self.run.ctx.clients.dns.lookup_host(loaner.fqdn)
        if known is not None:
            raise ActionFailure(
                f"{loaner.fqdn} already resolves to {known.ip}; remove its DNS records or pick another name (disambig)"
            )
        return "OK."

    async def _pick_address(self) -> str:
        subnet_id = self.run.ctx.config.aws.subnet_id
        if not subnet_id:
            raise ActionFailure("no [aws] subnet_id configured")
        self.ip = await _free_address(self.run, self.run.ctx.clients.aws, subnet_id)
        return f"{self.ip}."

    async def _make_records(self, loaner: _Loaner, ip: str) -> str:
        inventory = self.run.ctx.clients.inventory
        description = f"bug {loaner.bug}: loaner for {loaner.nick}"
        self.records.append(await inventory.create_address_record(loaner.fqdn, ip, description))
        self.records.append(await inventory.create_ptr_record(loaner.fqdn, ip, description))
        return "A and PTR created."

    async def _resolves(self, fqdn: str, ip: str) -> str:
        await _wait_for_dns(self.run, fqdn, ip)
        return f"{ip}."

    async def _launch(self, loaner: _Loaner, spec: LaunchSpec) -> str:
        if not spec.image_id and not spec.launch_template:
            raise ActionFailure(
                f"no [aws] {loaner.instance_type}_ami or {loaner.instance_type}_launch_template configured"
            )
        self.launching = loaner.name
        self.instance = await self.run.ctx.clients.aws.run_instance(spec)
        return f"{self.instance.instance_id}."

    async def _running(self, launched: Instance) -> str:
        self.running = await self.run.ctx.clients.aws.wait_for_state(launched.instance_id, "running")
        return "running."

    async def undo(self) -> None:
        """Terminate what was launched and delete the DNS records made, saying so."""
        aws = self.run.ctx.clients.aws
        launched = [self.instance] if self.instance is not None else []
        if not launched and self.launching is not None:
            # No answer to the launch: the name did not exist before, so any
            # live instance under it now is ours.
            try:
                launched = await aws.find_instances(self.launching)
            except AWSError as error:
                self.lines.append(f"Cleaning up: looking for {self.launching}...Failed: {error}. Check by hand.")
        for instance in launched:
            heading = f"Cleaning up: terminating {instance.instance_id}"
            try:
                state = await aws.terminate(instance.instance_id)
                self.lines.append(f"{heading}...{state}.")
            except AWSError as error:
                self.lines.append(f"{heading}...Failed: {error}. Terminate it by hand.")
        for record in reversed(self.records):
            heading = f"Cleaning up: deleting the {record.kind} record {record.fqdn} -> {record.ip}"
            try:
                await self.run.ctx.clients.inventory.delete_dns_record(record)
                self.lines.append(f"{heading}...done.")
            except RemoteError as error:
                self.lines.append(f"{heading}...Failed: {error}. Delete it by hand.")
        self.show()


def _made(value: _T | None, what: str) -> _T:
    """What a step that succeeded has set."""
    if value is None:
        raise RuntimeError(f"the step making {what} succeeded without it")
    return value


def _launch_spec(run: ActionRun, loaner: _Loaner, ip: str) -> tuple[LaunchSpec, str]:
    """What to launch for C{loaner} at C{ip}, and where it comes from as the status says it."""
    config = run.ctx.config.aws
    if loaner.instance_type == "build":
        image, template, kind = config.build_ami, config.build_launch_template, config.build_instance_type
    else:
        image, template, kind = config.test_ami, config.test_launch_template, config.test_instance_type
    tags = {
        "Name": loaner.name,
        "FQDN": loaner.fqdn,
        "moz-loaned-to": loaner.email,
        "moz-bug": str(loaner.bug),
        "moz-type": loaner.moz_type,
        "moz-state": "ready",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.ctx.reactor.seconds())),
    }
    source = f"launch template {template}" + (f" with {image}" if image else "") if template else image or "nothing"
    spec = LaunchSpec(
        subnet_id=config.subnet_id or "",
        private_ip=ip,
        tags=tags,
        image_id=image,
        launch_template=template,
        instance_type=kind,
        key_name=config.key_name,
        client_token=f"slaveapi-{run.requestid}-{loaner.name}",
    )
    return spec, source


async def aws_create_instance(
    run: ActionRun, email: str, bug: int, instance_type: str, arch: int = 64, disambig: int | None = None
) -> dict[str, str]:
    """
    Create a loaner instance for C{email} (see the module docstring for the steps).

    @param email: the owner; its part before C{@} (the nick) names the loaner.
    @param bug: the bug the loaner is for.
    @param instance_type: C{build} or C{test}.
    @param arch: 32 or 64 (32 only for C{test}).
    @param disambig: appended to a default name, to tell one user's loaners apart.
    @return: the instance's tags plus C{ip} and C{instance_id}.
    """
    aws = run.ctx.clients.aws
    nick = nick_of(email)
    name = loaner_name(run.slave, instance_type, arch, nick, disambig)
    fqdn = _loaner_fqdn(run, name, instance_type)
    if len(name) > _MAX_LABEL or len(fqdn) > 253:
        raise ActionFailure(f"Instance name {fqdn} is too long for a host name; use a shorter slave name or email.")
    creation = _Creation(run)
    try:
        return await creation.create(_Loaner(
            email=email, bug=bug, instance_type=instance_type, arch=arch, nick=nick, name=name, fqdn=fqdn
        ))
    except StepFailed:
        await creation.undo()
        creation.lines.append(f"Instance '{name}' was not created.")
        raise ActionFailure(creation.text) from None
    except (CancelledError, Exception):
        # Out of time, the service stopping, or a bug: leave nothing half made behind.
        await creation.undo()
        raise
    finally:
        if creation.ip is not None:
            aws.claimed_ips.discard(creation.ip)


def _loaner_fqdn(run: ActionRun, name: str, instance_type: str) -> str:
    """
    The FQDN of the loaner C{name}: under its configured domain, and only
    for a name of the loaner patterns of C{instance_type}.
    """
    config = run.ctx.config
    try:
        machine = identify_loaner(config, name)
    except UnknownMachine:
        raise ActionFailure(
            f"{name} is not a loaner name: expected one matching [aws] {instance_type}_loaner_names "
            f"({', '.join(_patterns(config, instance_type)) or 'none configured'})"
        ) from None
    if machine.loaner != instance_type:
        raise ActionFailure(
            f"{name} is a {machine.loaner} loaner name; instance_type={instance_type} expects one matching "
            f"{', '.join(_patterns(config, instance_type)) or 'none configured'}"
        )
    return machine.fqdn


def _patterns(config: Config, instance_type: str) -> tuple[str, ...]:
    return config.aws.build_loaner_names if instance_type == "build" else config.aws.test_loaner_names


async def _free_address(run: ActionRun, aws: AWSSpec, subnet_id: str) -> str:
    """
    The first address of the subnet that nothing uses, nobody is claiming,
    and that has no reverse DNS; claimed for this creation.
    """
    usage = await aws.subnet_usage(subnet_id)
    network = ipaddress.ip_network(usage.cidr, strict=False)
    # AWS keeps the network address, the next three and the broadcast address.
    hosts = network.num_addresses - 5
    checked = 0
    for offset in range(4, 4 + max(hosts, 0)):
        candidate = str(network.network_address + offset)
        if candidate in usage.used or candidate in aws.claimed_ips:
            continue
        if checked >= MAX_ADDRESS_CANDIDATES:
            raise ActionFailure(
                f"no free address: the first {MAX_ADDRESS_CANDIDATES} unused addresses of {usage.cidr} "
                "all have reverse DNS"
            )
        checked += 1
        name = await run.ctx.clients.dns.reverse(candidate)
        if name is not None:
            run.log.debug("{ip} is unused in EC2 but has reverse DNS {name}", ip=candidate, name=name)
            continue
        aws.claimed_ips.add(candidate)
        return candidate
    raise ActionFailure(f"no free address left in {usage.cidr}")


async def _wait_for_dns(run: ActionRun, fqdn: str, ip: str) -> None:
    """Poll DNS until C{fqdn} resolves to C{ip}, at most C{[aws] dns_timeout} seconds."""
    config = run.ctx.config.aws
    last = "no answer yet"

    async def resolved() -> bool:
        nonlocal last
        try:
            info = await run.ctx.clients.dns.lookup_host(fqdn)
        except DNSError as error:
            last = str(error)
            return False
        if info is not None and info.ip == ip:
            return True
        last = "it does not exist" if info is None else f"it resolves to {info.ip}"
        return False

    def late() -> ActionFailure:
        return ActionFailure(f"{fqdn} did not resolve to {ip} within {config.dns_timeout:g}s ({last})")

    await poll_until(
        run.ctx.reactor, resolved, config.poll_interval, config.dns_timeout, f"DNS for {fqdn}", timeout_error=late
    )


ACTIONS = (
    Action(
        name="aws_create_instance",
        run=aws_create_instance,
        exclusive=True,
        timeout=3600.0,
        scope="aws",
        arguments=create_arguments,
        names=LOANERS,
        fields=CREATE_FORM,
    ),
    Action(
        name="aws_start_instance",
        run=aws_start_instance,
        exclusive=True,
        timeout=1200.0,
        scope="aws",
        routes=("start",),
    ),
    Action(
        name="aws_stop_instance", run=aws_stop_instance, exclusive=True, timeout=1200.0, scope="aws", routes=("stop",)
    ),
    Action(
        name="aws_terminate_instance",
        run=aws_terminate_instance,
        exclusive=True,
        timeout=1200.0,
        scope="aws",
        routes=("terminate",),
    ),
)
