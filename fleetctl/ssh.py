"""fleetctl's use of the system OpenSSH client: `ssh`, remote status/journal, and --tunnel.

fleet linked an SSH library; we run the `ssh` binary instead, so ~/.ssh/config, agents and keys
work as the user expects. Host keys are checked against --known-hosts-file (fleet's default
~/.fleetctl/known_hosts) unless --strict-host-key-checking=false.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetctl.sshopts import DEFAULT_KNOWN_HOSTS, SshError, SshOptions, split_hostport

__all__ = ["DEFAULT_KNOWN_HOSTS", "SshError", "SshOptions", "SshTunnel", "run_here_or_there", "split_hostport",
           "ssh_argv", "ssh_binary"]

def ssh_binary() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise SshError("the ssh client is not installed (fleetctl uses the system `ssh` for ssh, status, "
                       "journal and --tunnel): install openssh-client")
    return found


def ssh_argv(opts: SshOptions, host: str, *, port: int = 22, command: list[str] | None = None,
             forward_agent: bool = False, tty: bool | None = None, extra: list[str] | None = None) -> list[str]:
    """The ssh command line fleetctl runs to reach `host` (through --tunnel if set)."""
    argv = [ssh_binary(), "-p", str(port), "-o", f"ConnectTimeout={max(1, int(round(opts.timeout)))}"]
    if opts.strict_host_key_checking:
        known = os.path.expanduser(opts.known_hosts_file)
        Path(known).parent.mkdir(parents=True, exist_ok=True)
        argv += ["-o", "StrictHostKeyChecking=ask", "-o", f"UserKnownHostsFile={known}"]
    else:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    if forward_agent:
        argv.append("-A")
    if tty is True:
        argv.append("-t")
    elif tty is False:
        argv.append("-T")
    bastion = opts.tunnel_hostport()
    if bastion is not None:
        bhost, bport = bastion
        bhost = f"[{bhost}]" if ":" in bhost else bhost
        argv += ["-J", f"{opts.username}@{bhost}:{bport}"]
    argv += list(extra or [])
    argv.append(f"{opts.username}@{host}")
    if command:
        argv.append(" ".join(shlex.quote(part) for part in command))
    return argv


def local_machine_id(path: str = "/etc/machine-id") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def run_here_or_there(opts: SshOptions, command: list[str], machine_id: str, public_ip: str, *,
                      port: int = 22, sudo: bool = False, capture: bool = False) -> tuple[int, str]:
    """fleet's runCommand: run locally if the machine is this one, else over SSH.

    Returns (exit status, output); the output is captured only with capture=True, otherwise it
    goes straight to our stdout/stderr."""
    if machine_id and machine_id == local_machine_id():
        argv = command
    elif not public_ip:
        raise SshError(f"Error getting machine IP: machine {machine_id} has no public IP")
    else:
        argv = ssh_argv(opts, public_ip, port=port, command=["sudo", *command] if sudo else command)
    if capture:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return done.returncode, done.stdout.decode("utf-8", "replace")
    return subprocess.call(argv), ""


# ---------------------------------------------------------------------------- --tunnel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SshTunnel:
    """`ssh -N -L local:remote` through the bastion; the API or etcd is then reached locally.

    Remote targets: ("unix", "/var/run/fleet.sock") or ("tcp", host, port). `local` is the local
    unix socket path or "127.0.0.1:<port>" once started."""

    opts: SshOptions
    target: tuple
    local: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)
    _tmpdir: str | None = None

    def start(self) -> str:
        bastion = self.opts.tunnel_hostport()
        if bastion is None:
            raise SshError("--tunnel is empty")
        host, port = bastion
        if self.target[0] == "unix":
            self._tmpdir = tempfile.mkdtemp(prefix="fleetctl-tunnel-")
            self.local = os.path.join(self._tmpdir, "fleet.sock")
            spec = f"{self.local}:{self.target[1]}"
        else:
            local_port = _free_port()
            self.local = f"127.0.0.1:{local_port}"
            rhost = self.target[1]
            rhost = f"[{rhost}]" if ":" in rhost else rhost
            spec = f"127.0.0.1:{local_port}:{rhost}:{self.target[2]}"
        direct = SshOptions(self.opts.username, self.opts.timeout, self.opts.strict_host_key_checking,
                            self.opts.known_hosts_file, "")
        argv = ssh_argv(direct, host, port=port, tty=False,
                        extra=["-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-L", spec])
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + self.opts.timeout + 2
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace").strip()
                self.close()
                raise SshError(f"SSH tunnel through {host}:{port} failed: {err.splitlines()[-1] if err else 'ssh exited'}")
            if self._ready():
                return self.local
            time.sleep(0.05)
        self.close()
        raise SshError(f"SSH tunnel through {host}:{port} not ready after {self.opts.timeout:g}s")

    def _ready(self) -> bool:
        if self.target[0] == "unix":
            probe = socket.socket(socket.AF_UNIX)
            addr: object = self.local
        else:
            probe = socket.socket()
            h, _, p = self.local.rpartition(":")
            addr = (h, int(p))
        probe.settimeout(0.2)
        try:
            probe.connect(addr)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
