"""Trees of program children (real executables), for tests/test_program.py."""

from __future__ import annotations

import sys

import prismatic as p

PY = sys.executable

# Serves HTTP on argv[1] (0: a port the kernel picks) after argv[2] seconds, then prints
# the port (a line readiness check can wait for it).
HTTP_SERVER = (
    "import http.server, sys, time\n"
    "time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)\n"
    "s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])),"
    " http.server.SimpleHTTPRequestHandler)\n"
    "print('listening on', s.server_address[1], flush=True)\n"
    "s.serve_forever()\n"
)

# Writes the file argv[1] after 0.3 s, then says READY=1 to $NOTIFY_SOCKET (sd_notify).
NOTIFIER = (
    "import os, socket, sys, time\n"
    "time.sleep(0.3)\n"
    "open(sys.argv[1], 'w').close()\n"
    "addr = os.environ['NOTIFY_SOCKET']\n"
    "addr = '\\0' + addr[1:] if addr.startswith('@') else addr\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "s.sendto(b'STATUS=warming up\\nREADY=1', addr)\n"
    "time.sleep(60)\n"
)

# A shell that starts grandchildren: two in its group, one in a session of its own.
FORKER = "sleep 300 & sleep 300 & setsid sleep 300 & echo forked; wait"

basic = p.SupervisorSpec(
    flags=p.SupFlags(intensity=20, period=10),
    children=[
        p.ChildSpec(id="sleeper", start=p.Program(argv=["sleep", "300"])),
        p.ChildSpec(id="pool", start=p.SupervisorSpec(
            flags=p.SupFlags(strategy="simple_one_for_one", intensity=5),
            children=[p.ChildSpec(id="worker", start=p.Program(argv=["sleep"]),
                                  args=("300",))])),
        p.ChildSpec(id="mid", start=p.SupervisorSpec(children=[
            p.ChildSpec(id="forker", start=p.Program(
                argv=["sh", "-c", FORKER], ready=p.LineCheck(pattern="^forked$"))),
        ])),
    ],
)


def printers() -> p.SupervisorSpec:
    """A pool of Printers: started from its spares (which know the template)."""
    return p.SupervisorSpec(flags=p.SupFlags(strategy="simple_one_for_one", intensity=5),
                            children=[p.ChildSpec(id="printer", start=Printer)])


class Printer(p.Worker):
    """A Python worker that prints (its output goes to its log, as a program's does)."""

    def init(self) -> None:
        import os  # noqa: PLC0415
        import sys  # noqa: PLC0415

        print("printed in init")
        print("to stderr", file=sys.stderr)
        os.system("echo from a subprocess")  # descriptor 1, not sys.stdout

    def handle_call(self, msg: object, caller: object) -> object:
        if isinstance(msg, list) and msg[0] == "flood":  # msg[1] bytes, in 64 KiB lines
            line = "x" * 65535
            for _ in range(msg[1] // 65536):
                print(line)
            return "flooded"
        print(f"called with {msg!r}")
        return "ok"
