"""fleet-run's hardening defaults, the pure parts (issue 17): the user namespace's id range and
--private-users parsing, the shifted owners of an image copy, and the seccomp deny list (checked
against systemd's own groups and against libseccomp's names)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetd.container.render import DENIED_SYSCALLS
from fleetd.errors import LaunchError
from fleetd.launcher import seccomp
from fleetd.launcher.idrange import USERNS_SIZE, IdRange, parse_private_users, userns_base
from fleetd.launcher.userns import shifted_id


@pytest.mark.parametrize("text, privileged, allowed, expected", [
    (None, False, True, IdRange(userns_base("web"))),      # the default: a namespace
    ("auto", False, True, IdRange(userns_base("web"))),
    (None, False, False, None),                            # where the kernel allows
    (None, True, True, None),                              # not with --privileged...
    ("yes", True, True, IdRange(userns_base("web"))),      # ...unless asked for
    ("yes", False, True, IdRange(userns_base("web"))),
    ("no", False, True, None),
    ("off", False, False, None),
    ("100000", False, True, IdRange(100000, USERNS_SIZE)),
    ("100000:1000", False, True, IdRange(100000, 1000)),
])
def test_private_users(text, privileged, allowed, expected):
    assert parse_private_users(text, "web", privileged, allowed) == expected


@pytest.mark.parametrize("text, allowed, message", [
    ("maybe", True, 'invalid --private-users "maybe"'),
    ("0:65536", True, "above uid 0"),
    ("4294967000:65536", True, "below 2^32-1"),
    ("1000:0", True, "above uid 0"),
    ("yes", False, "gives no user namespaces"),
    ("100000", False, "gives no user namespaces"),
])
def test_private_users_errors(text, allowed, message):
    with pytest.raises(LaunchError, match=re.escape(message)):
        parse_private_users(text, "web", False, allowed)


def test_range_is_the_nspawn_runtimes():
    ids = IdRange(userns_base("web"))
    assert str(ids) == f"{userns_base('web')}:65536"
    assert ids.map_line() == f"0 {userns_base('web')} 65536\n"
    assert userns_base("web") != userns_base("web2")


@given(st.integers(0, 2**32 - 2), st.integers(1, 2**20))
def test_shifted_ids_stay_in_the_range(host_id, base):
    ids = IdRange(base * USERNS_SIZE)
    shifted = shifted_id(host_id, ids)
    assert ids.base <= shifted < ids.base + ids.size
    assert shifted == ids.base + host_id or host_id >= ids.size


def test_seccomp_list_holds_what_the_unit_denies_and_what_builds_a_container():
    for group in DENIED_SYSCALLS:      # the launcher unit's SystemCallFilter=~ groups
        assert group in seccomp.SYSTEMD_GROUPS
    for name in ("mount", "umount2", "pivot_root", "unshare", "setns", "reboot", "kexec_load",
                 "init_module", "keyctl", "bpf", "open_by_handle_at", "ptrace", "swapon"):
        assert name in seccomp.DENIED
    # what ordinary programs need stays allowed (clone only with namespace flags is refused)
    for name in ("clone", "execve", "chroot", "socket", "setuid", "chown", "kill"):
        assert name not in seccomp.DENIED


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("group", sorted(seccomp.SYSTEMD_GROUPS))
def test_groups_are_systemds(group):
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group],
                         capture_output=True, text=True, check=True).stdout
    members = {line.strip() for line in out.splitlines()[1:]
               if line.strip() and not line.strip().startswith(("#", "@"))}
    ours = set(seccomp.SYSTEMD_GROUPS[group])
    if group == "@mount":
        assert members - ours == {"chroot"}   # the one member left allowed, as Docker does
    else:
        assert members == ours


def test_names_resolve_with_libseccomp():
    resolved = {name: seccomp.resolve(name) for name in seccomp.DENIED}
    for name in ("mount", "unshare", "setns", "reboot", "keyctl", "bpf", "pivot_root"):
        assert isinstance(resolved[name], int) and resolved[name] >= 0
    assert seccomp.resolve("no_such_syscall") is None
    seccomp.default_filter().release()   # builds (not loaded: that would filter this process)
