"""
The IPMI worker process: runs blocking pyghmi calls for L{slaveapi.clients.ipmi}.

Started as C{python -m slaveapi.clients._ipmi_worker} by L{IPMIClient}'s pool
(never by hand). It serves one request at a time over its pipes, as JSON
lines: it writes C{{"ready": true}} once pyghmi is imported, then for each
request line on stdin writes exactly one answer line on stdout.

A request::

    {"id": 7, "host": "10.0.0.5", "port": 623, "username": "ADMIN",
     "password": "...", "op": "status"}            # or "op": "control", "directive": 0..5
                                                   # or "op": "set_boot", "selector": 1 | 2 | 6
                                                   # or "op": "get_boot"

An answer::

    {"id": 7, "ok": true, "powered": true}         # status
    {"id": 7, "ok": true}                          # control
    {"id": 7, "ok": true, "kept": true}            # set_boot
    {"id": 7, "ok": true, "valid": true, "persistent": false, "selector": 1}   # get_boot
    {"id": 7, "ok": false, "kind": "setup" | "auth" | "command", "message": "..."}

C{set_boot} is two Set System Boot Options (netfn 0x00, command 0x08), as
pyghmi's own C{set_bootdev} sends them. First parameter 3, "boot flag valid
bit clearing", with bit 3 set: by default a BMC clears the boot flags'
"valid" bit when no chassis control command follows within 60 s, which
would silently drop an override set for a later reboot. C{kept} says whether
the BMC took that (C{false}: it does not support parameter 3, completion code
0x80, and may drop the override after 60 s). Then parameter 5, the boot
flags, with the "valid" bit set and the "persistent" bit clear: the BMC
forces boot device C{selector} (IPMI 2.0 table 28-14, data byte 2 bits 5:2)
at the next boot only. C{get_boot} is Get System Boot Options (command 0x09)
of parameter 5, answered as its bits; a reply whose "parameter valid" byte
has bit 7 set (the BMC marks the parameter invalid or locked) is a
C{command} error.

C{kind} C{setup} means the session could not be set up (no BMC answered, or
it broke off): the caller may retry. C{auth} means the BMC refused the user
or password. C{command} means the session worked but the BMC refused or did
not answer the command.

Why a process of its own: pyghmi blocks, has no per-call timeout, deadlocks
when threads of one process use it at once, and shares global session
tables with pyghmi's BMC server. Here it runs alone and single-threaded (but
for pyghmi's own I/O thread), so the service can enforce deadlines by
killing this process. This module imports nothing from Twisted and never
writes anything but answers to its stdout (pyghmi's stray prints go to
stderr); the password only ever travels over the pipe, never on argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import IO, Any

# Chassis control directives (IPMI 2.0, table 28-4) the client may send.
_DIRECTIVES = frozenset({0, 1, 2, 3, 5})
# Boot device selectors (IPMI 2.0, table 28-14) the client may force: PXE, hard drive, BIOS setup.
_SELECTORS = frozenset({1, 2, 6})
_OPS = ("status", "control", "set_boot", "get_boot")
# Boot options parameter 3, boot flag valid bit clearing; bit 3: do not clear after the 60 s timeout.
_VALID_BIT_CLEARING = 3
_KEEP_PAST_60S = 0x08
# Completion code: parameter not supported.
_NOT_SUPPORTED = 0x80
# Boot options parameter 5, the boot flags; data byte 1 bit 7 "valid", bit 6 "persistent".
_BOOT_FLAGS = 5
# Get System Boot Options reply, the "parameter valid" byte: bit 7 set means invalid or locked.
_PARAMETER_INVALID = 0x80
_FLAG_VALID = 0x80
_FLAG_PERSISTENT = 0x40

# Session set-up errors that mean the credentials (or the user's role) were refused.
_AUTH_MARKERS = (
    "password",
    "unauthorized name",
    "unauthorized role",
    "invalid username",
    "integrity code",
    "privilege",
)


def _scrub(message: str, password: str) -> str:
    """One line, without the password in it (pyghmi never puts it there; belt and braces)."""
    line = " ".join(message.split()) or "no answer from the BMC"
    if password:
        line = line.replace(password, "********")
    return line[:300]


def _setup_kind(message: str) -> str:
    lowered = message.lower()
    return "auth" if any(marker in lowered for marker in _AUTH_MARKERS) else "setup"


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request; never raises."""
    from pyghmi.ipmi import command as ipmi_command

    ident = request.get("id")
    password = str(request.get("password") or "")
    try:
        host = str(request["host"])
        port = int(request["port"])
        username = str(request["username"])
        op = request["op"]
        directive = int(request.get("directive", -1))
        selector = int(request.get("selector", -1))
    except (KeyError, TypeError, ValueError) as error:
        return {"id": ident, "ok": False, "kind": "command", "message": f"bad request: {type(error).__name__}"}
    if (
        op not in _OPS
        or (op == "control" and directive not in _DIRECTIVES)
        or (op == "set_boot" and selector not in _SELECTORS)
    ):
        return {"id": ident, "ok": False, "kind": "command", "message": "bad request: unknown operation"}

    try:
        # Bytes, not str: with str credentials pyghmi 1.6.19 hangs on the
        # second Command of a process.
        cmd = ipmi_command.Command(
            bmc=host, userid=username.encode("utf-8"), password=password.encode("utf-8"), port=port
        )
    except Exception as error:  # pyghmi raises IpmiException, socket errors, struct errors...
        message = _scrub(str(error) if str(error) != "None" else "", password)
        return {"id": ident, "ok": False, "kind": _setup_kind(message), "message": message}

    kept = False
    try:
        if op == "status":
            response = cmd.raw_command(netfn=0, command=1)
        elif op == "control":
            response = cmd.raw_command(netfn=0, command=2, data=[directive])
        elif op == "set_boot":
            clearing = cmd.raw_command(netfn=0, command=8, data=[_VALID_BIT_CLEARING, _KEEP_PAST_60S])
            if "error" in clearing and clearing.get("code") != _NOT_SUPPORTED:
                reason = "boot flag valid bit clearing: " + _scrub(str(clearing["error"]), password)
                return {"id": ident, "ok": False, "kind": "command", "message": reason}
            kept = "error" not in clearing
            # Parameter, flags (valid, this boot only, legacy BIOS), device selector, then bytes 3-5.
            response = cmd.raw_command(netfn=0, command=8, data=[_BOOT_FLAGS, _FLAG_VALID, selector << 2, 0, 0, 0])
        else:
            # Parameter, set selector, block selector.
            response = cmd.raw_command(netfn=0, command=9, data=[_BOOT_FLAGS, 0, 0])
        if "error" in response:
            return {"id": ident, "ok": False, "kind": "command", "message": _scrub(str(response["error"]), password)}
        data = response.get("data") or b""
        if op == "status":
            if not data:
                return {"id": ident, "ok": False, "kind": "command", "message": "empty chassis status"}
            return {"id": ident, "ok": True, "powered": bool(data[0] & 1)}
        if op == "get_boot":
            return _boot_flags(ident, data)
        if op == "set_boot":
            return {"id": ident, "ok": True, "kept": kept}
        return {"id": ident, "ok": True}
    except Exception as error:
        message = _scrub(str(error) if str(error) != "None" else "", password)
        return {"id": ident, "ok": False, "kind": "command", "message": message}
    finally:
        # The answer is already decided; a logout that fails changes nothing of it.
        with contextlib.suppress(Exception):
            cmd.ipmi_session.logout()


def _boot_flags(ident: Any, data: Any) -> dict[str, Any]:
    """The answer to C{get_boot}, from Get System Boot Options' response data."""
    # Parameter version, then the parameter selector (bit 7: invalid or locked), then the flags.
    if len(data) < 4 or data[1] & 0x7F != _BOOT_FLAGS:
        return {"id": ident, "ok": False, "kind": "command", "message": "unreadable boot flags answer"}
    if data[1] & _PARAMETER_INVALID:
        reason = "the BMC marks its boot flags invalid or locked"
        return {"id": ident, "ok": False, "kind": "command", "message": reason}
    return {
        "id": ident,
        "ok": True,
        "valid": bool(data[2] & _FLAG_VALID),
        "persistent": bool(data[2] & _FLAG_PERSISTENT),
        "selector": (data[3] >> 2) & 0x0F,
    }


def _write(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def main() -> int:
    """Serve requests from stdin until it closes."""
    # Answers go to a private copy of stdout; anything pyghmi prints lands on stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    import pyghmi.ipmi.command  # noqa: F401  (pay the import before saying ready)

    _write(out, {"ready": True})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            _write(out, {"id": None, "ok": False, "kind": "command", "message": "bad request: not JSON"})
            continue
        _write(out, _serve(request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
