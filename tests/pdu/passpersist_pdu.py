"""
A net-snmp C{pass_persist} handler playing a ServerTech Sentry3 and an APC PDU.

snmpd runs one copy per C{pass_persist} line: C{argv[1]} is the subtree it
serves (the Sentry3 outlet table or the APC outlet branch), C{argv[2]} a JSON
file with the outlets, C{argv[3]} a file where every applied SET is logged
as C{<oid> <value>}. Each outlet is C{{"kind": "sentry"|"apc", "index":
"1.1.4"|"4", "on": bool, "behaviour": "normal"|"slow"|"stuck"}}: a slow
outlet reports its wait state for two reads after a SET, a stuck one
accepts SETs and never changes.

The protocol (snmpd(8) C{pass_persist}): C{PING} -> C{PONG}; C{get} /
C{getnext} + OID -> OID, type, value, or C{NONE}; C{set} + OID + C{type
value} -> C{DONE} or an error word. snmpd 5.9 sends a blank line after a
SET: blank lines are ignored without an answer.
"""

import json
import sys

SENTRY_STATUS = ".1.3.6.1.4.1.1718.3.2.3.1.5."
SENTRY_CONTROL = ".1.3.6.1.4.1.1718.3.2.3.1.11."
APC_CONTROL = ".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4."
APC_STATUS = ".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4."


def oid_key(oid):
    return tuple(int(part) for part in oid.strip(".").split("."))


class Outlet:
    def __init__(self, spec):
        self.kind = spec["kind"]
        self.index = spec["index"]
        self.on = bool(spec["on"])
        self.behaviour = spec.get("behaviour", "normal")
        self.waiting = 0  # reads left that show the wait state

    def status(self):
        if self.kind == "sentry":
            if self.waiting:
                self.waiting -= 1
                return 3 if self.on else 2  # onWait / offWait
            return 1 if self.on else 0
        if self.waiting:
            self.waiting -= 1
            return 2 if self.on else 1  # still the old state
        return 1 if self.on else 2

    def control(self):
        if self.kind == "sentry":
            return 0  # none
        return 1 if self.on else 2  # immediateOn / immediateOff

    def command(self, value):
        """Apply a control value; an error word or None."""
        if self.kind == "sentry":
            if value not in (0, 1, 2, 3):
                return "wrong-value"
            wanted = {0: None, 1: True, 2: False, 3: True}[value]
        else:
            if value not in range(1, 8):
                return "wrong-value"
            wanted = {1: True, 2: False, 3: True}.get(value)
        if wanted is None or self.behaviour == "stuck":
            return None
        self.on = wanted
        if self.behaviour == "slow":
            self.waiting = 2
        return None


def main():
    prefix, table_path, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
    prefix = "." + prefix.strip(".") + "."
    with open(table_path, encoding="utf-8") as handle:
        outlets = [Outlet(spec) for spec in json.load(handle)]
    objects = {}  # oid text -> (outlet, "status" | "control")
    for outlet in outlets:
        if outlet.kind == "sentry":
            names = ((SENTRY_STATUS, "status"), (SENTRY_CONTROL, "control"))
        else:
            names = ((APC_STATUS, "status"), (APC_CONTROL, "control"))
        for base, column in names:
            oid = base + outlet.index
            if oid.startswith(prefix):
                objects[oid] = (outlet, column)
    ordered = sorted(objects, key=oid_key)
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115  # open for the life of this process

    def answer(*lines):
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()

    def value_of(oid):
        outlet, column = objects[oid]
        return outlet.status() if column == "status" else outlet.control()

    while True:
        line = sys.stdin.readline()
        if not line:
            return
        command = line.strip()
        if not command:
            continue  # snmpd's blank line after a SET: no answer
        if command == "PING":
            answer("PONG")
        elif command == "get":
            oid = sys.stdin.readline().strip()
            if oid in objects:
                answer(oid, "integer", str(value_of(oid)))
            else:
                answer("NONE")
        elif command == "getnext":
            oid = sys.stdin.readline().strip()
            key = oid_key(oid)
            following = [candidate for candidate in ordered if oid_key(candidate) > key]
            if following:
                answer(following[0], "integer", str(value_of(following[0])))
            else:
                answer("NONE")
        elif command == "set":
            oid = sys.stdin.readline().strip()
            kind, _, raw = sys.stdin.readline().strip().partition(" ")
            if oid not in objects or objects[oid][1] != "control":
                answer("not-writable")
            elif kind != "integer":
                answer("wrong-type")
            else:
                outlet, _ = objects[oid]
                problem = outlet.command(int(raw))
                if problem:
                    answer(problem)
                else:
                    log.write(f"{oid} {raw}\n")
                    log.flush()
                    answer("DONE")
        else:
            answer("NONE")


if __name__ == "__main__":
    main()
