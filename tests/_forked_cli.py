"""The full fleetctl CLI as the reference of byte-for-byte comparisons, without paying its
start-up per command line: a fork server.

The fast-path tests (tests/etcd/test_fleetctl_fast*.py) run each command line twice, through
the fast entry point and through the full CLI, and compare what they print. The fast path's
runs must be fresh interpreters (they check its import set with `-X importtime`); the full
CLI's runs are only the reference output, and importing click, aiohttp and fleetd again for
each of them was most of those modules' CPU (about 0.15 s a run, some sixty runs). So one
process imports the full CLI once and forks a child per command line: each run is still a
process of its own (its own cwd, environment, argv, stdout/stderr on pipes, exit code, and
fleetctl.cli's own `main()` that ends with os._exit), only the imports are inherited. Tests
about start-up (what a cold `fleetctl` imports, how fast it starts) keep real subprocesses
(tests/etcd/test_fleetctl_startup.py, and each fast-path module's own unreachable-API test
compares two cold processes).

`run(..., entry="fast")` forks the fast entry point instead (what `python -m fleetctl` runs,
fleetctl/__main__.py's `fleetctl.fast.main()`) for the runs the fast path hands over to the
full CLI: what such a run checks is the fast path's decision (nothing printed, nothing written,
then the full CLI's answer), and a cold hand-over imports the full CLI, gRPC for the etcd
driver, again each time (~0.2-0.3 CPU-s a run). The run reports `handed_over`: whether the fast
entry point called `fleetctl.cli.main`. The runs whose import set is checked (every run the
fast path answers itself) stay cold processes, and so does one hand-over per module (the
control that a cold process hands over the same way).

`shared()`: the pytest process's one full-CLI server (the etcd driver's aetcd and gRPC preloaded
too), started by the first module that asks and closed at the session's end (tests/conftest.py's
`forked_cli`): the fast-path, fleetctl and image-build modules a worker runs share it instead of
importing the CLI again each (~0.3-0.5 CPU-s a server). A run forks from the server as it was
after its imports: nothing a run does reaches the next.

`ForkedCli(preload, cli=False)` and `run(..., entry="module:NAME")`: `python -m NAME ARGS` (runpy,
as `-m` does) forked from a server that imported `preload` once, for other programs whose runs
start the same code again and again (fleet-run in tests/unit/test_launcher.py: ~0.12 CPU-s of
start-up in each of its thirty-odd runs).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time

#: imported by the server before it forks: what the full CLI's unit and list commands load
PRELOAD = ("fleetctl.cli", "fleetctl.fast", "fleetctl.fast_units", "fleetctl.fast_etcd", "fleetctl.api_client", "fleetctl.commands.common", "fleetctl.commands.units",
           "fleetctl.commands.unitops", "fleetctl.commands.machines")

#: both fork servers' reading of a run: its stdout and stderr to their ends, then its exit
#: status (only `os` and `select`, which both servers import before forking)
_READ_RUN = r"""
def read_run(pid, out_r, err_r):
    chunks = {out_r: [], err_r: []}
    open_fds = [out_r, err_r]
    while open_fds:
        for fd in select.select(open_fds, [], [])[0]:
            data = os.read(fd, 65536)
            if data:
                chunks[fd].append(data)
            else:
                open_fds.remove(fd)
                os.close(fd)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r]), status
"""

_SERVER = r"""
import importlib, json, os, select, sys, traceback
for name in sys.argv[1:]:
    importlib.import_module(name)
requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the server's own stdout: the replies' fd only
for line in requests:
    ask = json.loads(line)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    hand_r, hand_w = os.pipe()  # the fast entry's run writes one byte here when it calls the full CLI
    pid = os.fork()
    if pid == 0:  # the run: a process of its own, as `python -c "...main()" ARGS` would be
        try:
            os.close(out_r), os.close(err_r), os.close(hand_r), os.close(replies.fileno())
            os.dup2(out_w, 1), os.dup2(err_w, 2)
            os.close(out_w), os.close(err_w)
            stdin = os.open(os.devnull, os.O_RDONLY)
            os.dup2(stdin, 0)
            os.chdir(ask["cwd"])
            os.environ.clear()
            os.environ.update(ask["env"])
            if ask.get("entry", "").startswith("module:"):  # as `python -m NAME ARGS`
                import runpy
                sys.argv = ["-m", *ask["args"]]  # run_module sets argv[0] to the module's file
                runpy.run_module(ask["entry"].split(":", 1)[1], run_name="__main__", alter_sys=True)
                raise SystemExit(0)
            if ask.get("entry") == "fast":  # as `python -m fleetctl ARGS`: fleetctl/__main__.py
                import fleetctl.cli, fleetctl.fast
                full_main = fleetctl.cli.main

                def hand_over():
                    os.write(hand_w, b"1")
                    return full_main()

                fleetctl.cli.main = hand_over  # what fleetctl.fast.main() imports when it hands over
                sys.argv = [os.path.join(os.path.dirname(fleetctl.fast.__file__), "__main__.py"), *ask["args"]]
                fleetctl.fast.main()  # ends with os._exit(code), its own or the full CLI's
                raise SystemExit(0)  # (as the end of fleetctl/__main__.py would)
            sys.argv = ["fleetctl", *ask["args"]]
            from fleetctl.cli import main
            main()  # ends with os._exit(code)
        except SystemExit as exc:
            code = exc.code if exc.code is None or isinstance(exc.code, int) else 1
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code or 0)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    os.close(out_w), os.close(err_w), os.close(hand_w)
    reply = {"pid": pid}
    replies.write(json.dumps(reply).encode() + b"\n")
    replies.flush()
    out, err, status = read_run(pid, out_r, err_r)
    os.set_blocking(hand_r, False)  # the child has ended: its byte is there or never comes
    try:
        handed_over = os.read(hand_r, 1) == b"1"
    except BlockingIOError:
        handed_over = False
    os.close(hand_r)
    reply = {"returncode": os.waitstatus_to_exitcode(status), "handed_over": handed_over,
             "stdout": out.decode("latin-1"), "stderr": err.decode("latin-1")}
    replies.write(json.dumps(reply).encode() + b"\n")
    replies.flush()
"""


def _text(data: bytes) -> str:
    """What subprocess.run(text=True) makes of a stream: decoded, universal newlines."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


def _exchange(server, request: bytes, argv: list[str], timeout: float) -> dict:
    """One run on a fork server (ForkedCli or ForkedFastPath): the request written, the run's
    pid, then its reply; past `timeout` the run is killed and TimeoutExpired raised."""
    with server.lock:
        view = memoryview(request)
        while view:
            view = view[os.write(server.proc.stdin.fileno(), view):]
        pid = server._reply(30)["pid"]
        try:
            return server._reply(timeout)
        except TimeoutError:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:  # it ended just now
                pass
            server._reply(30)  # the killed run's reply: the next run's comes after it
            raise subprocess.TimeoutExpired(argv, timeout) from None


class ForkedCli:
    """`run(args, cwd=, env=, timeout=)` -> subprocess.CompletedProcess, as
    `subprocess.run([python, "-c", "...fleetctl.cli.main()", *args], capture_output=True, text=True)`."""

    def __init__(self, preload: tuple[str, ...] = (), cli: bool = True) -> None:
        """`preload`: modules imported before forking besides PRELOAD (importing gRPC creates no
        channel or thread: forking after it is safe, the runs create their own); `cli=False`:
        without PRELOAD (a server for `entry="module:..."` runs only)."""
        self.proc = subprocess.Popen([sys.executable, "-c", _READ_RUN + _SERVER, *(PRELOAD if cli else ()), *preload],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, start_new_session=True)
        self.lock = threading.Lock()
        self.pending = b""  # read from the server, not yet a whole line

    def _reply(self, deadline_s: float) -> dict:
        """The server's next line (its replies can arrive together: read the pipe unbuffered and
        keep what follows the first line for the next call)."""
        deadline = time.monotonic() + deadline_s
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            data = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not data:
                raise RuntimeError(f"the fleetctl fork server ended (exit {self.proc.wait()})")
            self.pending += data
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, args: list[str], *, cwd, env: dict, timeout: float = 120,
            entry: str = "cli") -> subprocess.CompletedProcess:
        """entry "cli": the full CLI's `main()`; "fast": the fast entry point (`python -m
        fleetctl`), and the result's `handed_over` says whether it called the full CLI;
        "module:NAME": `python -m NAME`."""
        assert entry in ("cli", "fast") or entry.startswith("module:")
        argv = [sys.executable, "-c", f"{entry} (forked)", *args]
        done = _exchange(self, json.dumps({"args": list(args), "cwd": str(cwd), "env": dict(env),
                                           "entry": entry}).encode() + b"\n", argv, timeout)
        result = subprocess.CompletedProcess(argv, done["returncode"], _text(done["stdout"].encode("latin-1")),
                                             _text(done["stderr"].encode("latin-1")))
        result.handed_over = done["handed_over"]
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


#: what the shared server imports besides PRELOAD: the etcd driver (aetcd, gRPC; no channel or
#: thread is created by importing them, so forking after it is safe)
SHARED_PRELOAD = ("fleetd.registry.registry", "fleetctl.etcd_client")
_shared: dict[tuple, ForkedCli] = {}


def shared(preload: tuple[str, ...] = SHARED_PRELOAD, cli: bool = True) -> ForkedCli:
    """The pytest process's fork server for these arguments (ForkedCli's), started on first use
    (a new one if it ended): by default the full CLI's; test_launcher's modules share theirs
    (`shared(("fleetd.launcher.cli",), cli=False)`)."""
    key = (tuple(preload), cli)
    if key not in _shared or _shared[key].proc.poll() is not None:
        if key in _shared:
            _shared.pop(key).close()
        _shared[key] = ForkedCli(preload=preload, cli=cli)
    return _shared[key]


def close_shared() -> None:
    """Close the shared servers (all kinds): each is reaped here, its CPU the worker's."""
    while _shared:
        _shared.popitem()[1].close()
    while _shared_bare:
        _shared_bare.pop().close()


# ---------------------------------------------------------------- the fast path's runs, forked bare

#: the bare server: `python -X importtime` that imports nothing beyond the interpreter's start-up
#: but `select` (every fast-path run imports it too, through socket's selectors) and forks a child
#: per run, which runs the fast entry point as `-m fleetctl` does (runpy._run_module_as_main), so
#: the child's own imports are logged to its stderr by -X importtime as in a cold process.
#: `marshal` (loaded at start-up) carries the requests and replies: no json, no traceback here.
_BARE_SERVER = r"""
import marshal, os, sys
before = set(sys.modules)
import select
preloaded = sorted(set(sys.modules) - before)
reply_fd = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def read_exactly(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def send(obj):
    data = marshal.dumps(obj)
    data = len(data).to_bytes(8, "little") + data
    while data:
        data = data[os.write(reply_fd, data):]


send({"preloaded": preloaded})
while True:
    head = read_exactly(8)
    if head is None:
        break
    ask = marshal.loads(read_exactly(int.from_bytes(head, "little")))
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # as `python -X importtime -m fleetctl ARGS` in ask["cwd"] with ask["env"]
        code = 1
        try:
            os.close(out_r), os.close(err_r), os.close(reply_fd)
            os.dup2(out_w, 1), os.dup2(err_w, 2)
            os.close(out_w), os.close(err_w)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.chdir(ask["cwd"])
            os.environ.clear()
            os.environ.update(ask["env"])
            sys.path[0] = os.getcwd()  # -m puts the working directory first, -c put ''
            sys.argv = ["-m", *ask["args"]]
            import runpy
            runpy._run_module_as_main("fleetctl")  # fleetctl/__main__.py: ends with os._exit(code)
            code = 0
        except SystemExit as exc:
            code = exc.code if exc.code is None or isinstance(exc.code, int) else 1
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())
        try:
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code or 0)
    os.close(out_w), os.close(err_w)
    send({"pid": pid})
    out, err, status = read_run(pid, out_r, err_r)
    send({"returncode": os.waitstatus_to_exitcode(status),
          "stdout": out, "stderr": err})
"""


class ForkedFastPath:
    """`run(args, cwd=, env=, timeout=)` -> subprocess.CompletedProcess, as
    `subprocess.run([python, "-X", "importtime", "-m", "fleetctl", *args], capture_output=True,
    text=True)`: the fast entry point in a child forked from a bare interpreter (_BARE_SERVER),
    for the fast-path runs whose import set the tests check. The child's stderr has the
    `-X importtime` lines of everything it imported; `preloaded` is what the server had
    imported beyond start-up before forking (only `select`), which the log then lacks.
    tests/unit/test_forked_cli.py holds such runs to cold ones: the same output, exit code and
    import set. What it saves is the interpreter's start-up (~20 ms of a cold run's ~55 ms)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-X", "importtime", "-c", _READ_RUN + _BARE_SERVER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     bufsize=0, start_new_session=True)
        self.lock = threading.Lock()
        self.pending = b""
        self.preloaded = frozenset(self._reply(60)["preloaded"])

    def _reply(self, deadline_s: float) -> dict:
        import marshal

        deadline = time.monotonic() + deadline_s
        while len(self.pending) < 8 or len(self.pending) < 8 + int.from_bytes(self.pending[:8], "little"):
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            data = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not data:
                raise RuntimeError(f"the bare fork server ended (exit {self.proc.wait()})")
            self.pending += data
        size = int.from_bytes(self.pending[:8], "little")
        reply, self.pending = marshal.loads(self.pending[8:8 + size]), self.pending[8 + size:]
        return reply

    def run(self, args: list[str], *, cwd, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
        import marshal

        argv = [sys.executable, "-X", "importtime", "-m", "fleetctl (forked bare)", *args]
        data = marshal.dumps({"args": [str(a) for a in args], "cwd": str(cwd), "env": dict(env)})
        done = _exchange(self, len(data).to_bytes(8, "little") + data, argv, timeout)
        return subprocess.CompletedProcess(argv, done["returncode"], _text(done["stdout"]), _text(done["stderr"]))

    close = ForkedCli.close


_shared_bare: list[ForkedFastPath] = []


def shared_fast_path() -> ForkedFastPath:
    """The pytest process's bare fork server for fast-path runs, started on first use (a new one
    if it ended); closed by close_shared()."""
    if not _shared_bare or _shared_bare[0].proc.poll() is not None:
        while _shared_bare:
            _shared_bare.pop().close()
        _shared_bare.append(ForkedFastPath())
    return _shared_bare[0]
