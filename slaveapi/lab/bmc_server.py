"""
The lab's BMCs: a child process serving IPMI 2.0 (RMCP+) for simulated machines.

Run by L{slaveapi.lab.bmc.LabBMCs} as C{python -m slaveapi.lab.bmc_server};
pyghmi's BMC server cannot share a process with pyghmi clients (they share
global session tables), nor with the reactor (its loop blocks). It speaks
JSON lines:

  - stdin, first line, the configuration::

        {"machines": [{"name": "bld-linux64-lab-001", "ip": "127.1.1.1", "powered": true}, ...],
         "port": 6230, "username": "ADMIN", "password": "..."}

    then power state changes decided by the lab, C{{"machine": name, "powered": bool}},
    which is what C{get power} answers from then on, with C{"booted": true}
    when the machine's OS has just started. End of stdin ends the process.
  - stdout: C{{"event": "ready"}} once every BMC listens, then one
    C{{"event": "power", "machine": name, "action": "off" | "on" | "soft" | "reset" | "cycle"}}
    per chassis control command a client sent. The lab applies it and
    sends the resulting state back; until then the BMC assumes C{off} and
    C{on} took effect. And one C{{"event": "boot", "machine": name,
    "device": "network" | "hd" | "setup" | "default"}} per boot device a
    client set (for the lab's log).

The boot device is kept here, per machine, as a BMC keeps its boot flags:
Set System Boot Options (parameter 5) forces a device for the next boot,
Get System Boot Options answers it (pyghmi's server answers "valid, this
boot only"), and the lab's C{"booted"} clears it, as a BIOS does with a
one-time override once it has used it. Parameter 3 ("boot flag valid bit
clearing") is kept per BMC and read back as set, so a test can see that a
client asked the BMC not to drop its boot flags after 60 s; the lab BMC
itself never drops them.
  - stderr: diagnostics. If pyghmi's server loop dies the process exits
    with status 2.

pyghmi 1.6.19's server always answers an RMCP+ open-session request with
cipher suite 3 (HMAC-SHA1), whatever the client proposed; pyghmi's own
client proposes HMAC-SHA256 first and then crashes on the SHA1 answer. The
BMCs here refuse any authentication algorithm but SHA1 with "no matching
cipher suite" (RMCP+ status 0x11); the client then retries with SHA1, as it
does against real BMCs. ipmitool (C{-C 3}) proposes SHA1 and is unaffected.
Three more pyghmi server problems are worked around here, each of which
leaves BMCs of the process unanswered: its I/O thread watches only the
sockets that existed when it started (L{_wake_io_thread}); stale sessions
swallow a client's packets for the next BMC (L{_LabServerSession}); and
the I/O thread can block in recvfrom() under concurrent use
(L{_fix_pyghmi_io}). C{SIGUSR1} dumps every thread's stack to stderr.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import threading
import traceback
from typing import IO, Any

from pyghmi.ipmi import bmc as pyghmi_bmc
from pyghmi.ipmi.private import serversession, session as ipmisession

# RMCP+ open session request (IPMI 2.0 table 13-9): byte 12 is the proposed
# authentication algorithm; 1 is RAKP-HMAC-SHA1.
_AUTH_ALGORITHM_OFFSET = 12
_RAKP_HMAC_SHA1 = 1
# RMCP+ status code: no cipher suite matches the proposed algorithms.
_NO_MATCHING_CIPHER_SUITE = 0x11
_OPEN_SESSION_REQUEST = 0x10
# System boot options parameter 5, the boot flags; bit 7 of their first byte says they are valid.
_BOOT_FLAGS = 5
_BOOT_FLAG_VALID = 0x80
# System boot options parameter 3, boot flag valid bit clearing.
_VALID_BIT_CLEARING = 3


class _Chassis:
    """The power state of every machine served here, and the channel to the lab."""

    def __init__(self, out: IO[str], powered: dict[str, bool]) -> None:
        self._out = out
        self._powered = dict(powered)
        # pyghmi's names of the boot device forced for the next boot, by machine.
        self._boot: dict[str, str] = {}
        self._lock = threading.Lock()

    def powered(self, name: str) -> bool:
        with self._lock:
            return self._powered.get(name, False)

    def set_powered(self, name: str, powered: bool) -> None:
        with self._lock:
            if name in self._powered:
                self._powered[name] = powered

    def boot_device(self, name: str) -> str:
        """The device forced at the machine's next boot, C{default} for none."""
        with self._lock:
            return self._boot.get(name, "default")

    def set_boot_device(self, name: str, device: str) -> None:
        """A client forced C{device} (C{default}: none) for the next boot; the lab hears of it."""
        with self._lock:
            if device == "default":
                self._boot.pop(name, None)
            else:
                self._boot[name] = device
        self.send({"event": "boot", "machine": name, "device": device})

    def booted(self, name: str) -> None:
        """The machine booted: its one-time boot device is used up."""
        with self._lock:
            self._boot.pop(name, None)

    def command(self, name: str, action: str) -> None:
        """A client asked for C{action}: tell the lab, and assume the obvious outcome meanwhile."""
        with self._lock:
            if action == "off":
                self._powered[name] = False
            elif action == "on":
                self._powered[name] = True
        self.send({"event": "power", "machine": name, "action": action})

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message) + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()


class _LabServerSession(serversession.ServerSession):  # type: ignore[misc]  # pyghmi ships no types
    """
    pyghmi's server session with two fixes.

    It refuses to open with anything but HMAC-SHA1 authentication (see the
    module docstring). And it routes packets by the socket they arrived on:
    pyghmi keys server sessions by client address and port number only, and
    here every BMC has the same port on its own address, so a client that
    moves on from one BMC to the next (an IPMI worker does, from one
    socket) has its packets handed to its stale session with the previous
    BMC. pyghmi copes with the first packet of a new session only, and
    crashes its server loop (C{sessionless_data} on a session) when a
    retransmission follows. Here a packet that arrived on another BMC's
    socket retires the stale session and goes to that BMC.
    """

    def create_open_session_response(self, request: bytearray) -> bytearray:
        request = bytearray(request)
        if len(request) > _AUTH_ALGORITHM_OFFSET and request[_AUTH_ALGORITHM_OFFSET] != _RAKP_HMAC_SHA1:
            # Tag, status, two reserved bytes, the console's session id.
            self.clientsessionid = request[4:8]
            return bytearray([request[0], _NO_MATCHING_CIPHER_SUITE, 0, 0]) + request[4:8]
        response: bytearray = super().create_open_session_response(request)
        return response

    def process_pktqueue(self) -> None:
        handlers = ipmisession.Session.bmc_handlers
        while self.pktqueue:
            entry = self.pktqueue.popleft()
            data, sockaddr, sock = entry[0], entry[1], entry[2]
            packet = bytearray(data)
            if not (len(packet) >= 4 and packet[0] == 6 and packet[2:4] == b"\xff\x07"):
                continue
            port = sock.getsockname()[1]
            handler = handlers.get(sockaddr, {}).get(port)
            if handler is self and sock is self.socket:
                self._handle_ipmi_packet(packet, sockaddr=sockaddr, qent=entry)
                continue
            if handler is not None and handler is not self and handler.socket is sock:
                handler.pktqueue.append(entry)
                handler.process_pktqueue()
                continue
            if handler is self:  # the client moved on to another BMC: retire this session
                del handlers[sockaddr][port]
                if not handlers[sockaddr]:
                    del handlers[sockaddr]
            server = handlers.get(sock, {}).get(0)
            if server is not None:
                server.sessionless_data(data, sockaddr)


class LabBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]  # pyghmi ships no types
    """The BMC of one simulated machine: chassis power only."""

    def __init__(self, name: str, chassis: _Chassis, authdata: dict[str, str], port: int, address: str) -> None:
        super().__init__(authdata, port=port, address=address)
        self.name = name
        self._chassis = chassis
        # Boot options parameter 3 as last set (0: the BMC may clear the boot flags after 60 s).
        self._valid_bit_clearing = 0

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        """As pyghmi's, but RMCP+ open-session requests get a L{_LabServerSession}."""
        packet = bytearray(data)
        if (
            len(packet) >= 22
            and packet[0] == 6
            and packet[2:4] == b"\xff\x07"
            and packet[4] == 6
            and packet[5] == _OPEN_SESSION_REQUEST
        ):
            _LabServerSession(self.authdata, self.kg, sockaddr, self.serversocket, packet[16:], self.uuid, bmc=self)
            return
        super().sessionless_data(data, sockaddr)

    def get_power_state(self) -> str:
        return "on" if self._chassis.powered(self.name) else "off"

    def power_off(self) -> None:
        self._chassis.command(self.name, "off")

    def power_on(self) -> None:
        self._chassis.command(self.name, "on")

    def power_cycle(self) -> None:
        self._chassis.command(self.name, "cycle")

    def power_reset(self) -> None:
        self._chassis.command(self.name, "reset")

    def power_shutdown(self) -> None:
        self._chassis.command(self.name, "soft")

    def get_boot_device(self) -> str:
        return self._chassis.boot_device(self.name)

    def set_boot_device(self, bootdevice: str) -> None:
        self._chassis.set_boot_device(self.name, bootdevice)

    def get_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        """As pyghmi's, and parameter 3 read back as set (pyghmi answers it not)."""
        data = request.get("data") or b""
        if data and data[0] & 0x7F == _VALID_BIT_CLEARING:
            session.send_ipmi_response(data=[1, _VALID_BIT_CLEARING, self._valid_bit_clearing])
            return
        super().get_system_boot_options(request, session)

    def set_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        """As pyghmi's, but boot flags without the "valid" bit clear the override (pyghmi ignores the bit)."""
        data = request.get("data") or b""
        if len(data) >= 2 and data[0] & 0x7F == _VALID_BIT_CLEARING:
            self._valid_bit_clearing = data[1] & 0x1F
            session.send_ipmi_response()
            return
        if len(data) >= 2 and data[0] & 0x7F == _BOOT_FLAGS and not data[1] & _BOOT_FLAG_VALID:
            self._chassis.set_boot_device(self.name, "default")
            session.send_ipmi_response()
            return
        super().set_system_boot_options(request, session)


def _recv_without_blocking(sock: socket.socket, size: int) -> tuple[bytes, Any] | None:
    """pyghmi's C{_io_recvfrom}, without switching the socket to non-blocking mode first."""
    try:
        return sock.recvfrom(size, socket.MSG_DONTWAIT)
    except OSError:
        return None


def _fix_pyghmi_io() -> None:
    """
    Stop pyghmi's I/O thread from blocking in recvfrom() (this process only).

    pyghmi's I/O thread drains every readable socket with
    C{setblocking(0)} then C{recvfrom()}, while the server thread answers
    on the same sockets with C{setblocking(1)} then C{sendto()}. When the
    answer lands between the two, the I/O thread blocks in recvfrom() on
    that BMC's socket until someone next talks to that BMC, and every
    other BMC of the process stops answering (seen after a few hundred
    sessions with 8 clients). MSG_DONTWAIT makes each receive
    non-blocking whatever the socket's mode.
    """
    ipmisession._io_recvfrom = _recv_without_blocking


def _serve_forever() -> None:
    """pyghmi's server loop; if it ever ends, so does the process (non-zero)."""
    try:
        LabBmc.listen()
        print("bmc_server: the pyghmi server loop returned", file=sys.stderr)
    except BaseException:
        traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()
    os._exit(2)


def _wake_io_thread(ip: str, port: int) -> None:
    """
    Make pyghmi's I/O thread look at every BMC socket.

    The thread started with the first BMC and sits in a select() on the
    sockets that existed then (for up to 300 s); a datagram to the first
    socket wakes it, and its next select() takes them all. Datagrams under
    4 bytes are dropped unread by pyghmi.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
        wake.sendto(b"\x01", (ip, port))


def main() -> int:
    """Read the configuration, start every BMC, then follow the lab's power changes."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # pyghmi's prints must not reach the lab's pipe
    sys.stdout = sys.stderr

    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)  # stacks on demand, for debugging
    _fix_pyghmi_io()
    first = sys.stdin.readline()
    if not first:
        return 1
    config = json.loads(first)
    machines = config["machines"]
    port = int(config["port"])
    authdata = {str(config["username"]): str(config["password"])}
    chassis = _Chassis(out, {m["name"]: bool(m["powered"]) for m in machines})
    try:
        bmcs = [LabBmc(m["name"], chassis, authdata, port, m["ip"]) for m in machines]
    except OSError as error:
        print(f"bmc_server: cannot listen on UDP port {port}: {error}", file=sys.stderr)
        return 1
    threading.Thread(target=_serve_forever, name="pyghmi-bmc", daemon=True).start()
    if machines:
        _wake_io_thread(machines[0]["ip"], port)
    chassis.send({"event": "ready", "count": len(bmcs), "port": port})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            change = json.loads(line)
            chassis.set_powered(str(change["machine"]), bool(change["powered"]))
            if change.get("booted"):
                chassis.booted(str(change["machine"]))
        except (ValueError, KeyError, TypeError):
            print(f"bmc_server: ignoring unreadable line {line[:200]!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
