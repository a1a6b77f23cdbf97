"""A Debian 12 box for vagrant-libvirt, built here from Debian's packages (`fleet-lab box build`).

No box can be downloaded on a machine that reaches only package mirrors, so the box is made
from the same mirrors as the host: mmdebstrap with the host's apt sources, CA certificates and
apt options, the project's system packages (scripts/bootstrap.sh's APT_PACKAGES, without the
test-only browser) and a virtual environment `/opt/fleet-venv` with the project's Python
dependencies, installed from wheels the host's pip fetched (with the host's pip configuration).
`vagrant up` then only syncs the checkout, installs it with `--no-deps` and starts services.

The disk is made without mounting anything (the kernel may lack partition-table support):
an MBR partition entry written by sfdisk into an image file, the root filesystem written into
the partition with `mke2fs -d`, GRUB's boot.img and a core.img from grub-mkimage written with
dd, grub.cfg written by hand.

The result is cached below the cache directory under the hash of its inputs (this module, the
package list, the Python requirements, the host's apt sources and CA certificates): a build
with unchanged inputs reuses the box, and `vagrant box add` is skipped when Vagrant already
holds a box of that hash.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fleetd.errors import LabError

BOX_NAME = "fleet-py/debian12"
VENV = "/opt/fleet-venv"
CHECKOUT = "/opt/fleet-py"  # where the Vagrantfile syncs the checkout
PROJECT_FILES = ("pyproject.toml", "README.md", "bin", "fleetd", "fleetctl", "fleetlab")  # bin: fleetctl (script-files)
SUITE = "bookworm"
DISK_GIB = 8
PART_OFFSET = 1 << 20  # the root partition starts at 1 MiB (sector 2048)
ROOT_LABEL = "fleetroot"
# packages of scripts/bootstrap.sh that the VMs do not need: the browser drives the dashboard's
# browser tests on the host only (and is ~300 MB)
HOST_ONLY_PACKAGES = frozenset({"chromium", "chromium-driver"})
# what a Vagrant box needs on top: kernel, boot, ssh for Vagrant, network set-up Vagrant's
# Debian guest plugin writes (ifupdown), rsync for the synced folder, venv for the project
BOX_PACKAGES = (
    "linux-image-cloud-amd64", "initramfs-tools", "systemd-sysv", "udev", "openssh-server", "sudo",
    "ifupdown", "isc-dhcp-client", "rsync", "python3-venv", "ca-certificates", "netbase",
    "procps", "less", "curl",
)
HOST_TOOLS = ("mmdebstrap", "mke2fs", "sfdisk", "grub-mkimage", "qemu-img", "vagrant")
BUILD_PACKAGES = ("mmdebstrap", "e2fsprogs", "fdisk", "grub-pc-bin", "qemu-utils", "vagrant", "vagrant-libvirt")
GRUB_MODULES = ("biosdisk", "part_msdos", "ext2", "normal", "linux", "configfile", "search", "echo", "test")


def checkout_root() -> Path:
    return Path(__file__).resolve().parents[1]


def bootstrap_packages(checkout: Path) -> list[str]:
    """APT_PACKAGES of scripts/bootstrap.sh (the project's system packages)."""
    path = checkout / "scripts" / "bootstrap.sh"
    match = re.search(r"^APT_PACKAGES=\(([^)]*)\)", path.read_text(), re.M)
    if match is None:
        raise LabError(f"{path}: no APT_PACKAGES=(...) line")
    return match.group(1).split()


def box_packages(checkout: Path) -> list[str]:
    wanted = [p for p in bootstrap_packages(checkout) if p not in HOST_ONLY_PACKAGES]
    return sorted(set(wanted) | set(BOX_PACKAGES))


def python_requirements(checkout: Path) -> list[str]:
    """The project's runtime requirements (pyproject.toml) plus what installing it offline needs."""
    path = checkout / "pyproject.toml"
    data = tomllib.loads(path.read_text())
    build = data.get("build-system", {}).get("requires", [])
    return sorted(set(data["project"]["dependencies"]) | set(build) | {"wheel"})


def host_ca_certs() -> list[Path]:
    return sorted(p for p in Path("/usr/local/share/ca-certificates").glob("**/*.crt") if p.is_file())


def host_sources() -> list[Path]:
    """The host's enabled apt sources (the box installs from the same mirrors)."""
    paths = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    return [p for p in paths if p.is_file() and p.suffix in (".list", ".sources") and p.stat().st_size]


def debian_sources(paths: Sequence[Path]) -> list[Path]:
    """Of the host's sources, those of Debian itself (third-party repositories are left out)."""
    return [p for p in paths if re.search(r"deb\.debian\.org|debian\.org/debian|snapshot\.debian", p.read_text())]


def host_apt_options() -> list[str]:
    """The host's apt options that make its mirrors usable (a snapshot mirror's old Release files)."""
    opts = []
    for path in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if re.match(r'\s*Acquire::(Check-Valid-Until|Check-Date)\s+"?false"?;', line):
                opts.append(line.strip())
    return sorted(set(opts))


def project_layout(checkout: Path) -> str:
    """What an editable install depends on: console scripts, package discovery, top-level packages."""
    data = tomllib.loads((checkout / "pyproject.toml").read_text())
    tops = sorted(p.name for p in checkout.iterdir() if (p / "__init__.py").is_file())
    return json.dumps([data["project"].get("scripts", {}), data.get("tool", {}).get("setuptools", {}), tops],
                      sort_keys=True)


def _copy_project(checkout: Path, dest: Path) -> None:
    dest.mkdir()
    for name in PROJECT_FILES:
        src = checkout / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy(src, dest / name)


def vagrant_public_key() -> Path:
    """Vagrant's well-known insecure public key (Vagrant replaces it on first `vagrant up`)."""
    pattern = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"
    found = sorted(glob.glob(pattern)) + sorted(glob.glob("/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub"))
    if not found:
        raise LabError(f"Vagrant's insecure key not found ({pattern}); apt-get install vagrant")
    return Path(found[-1])


@dataclass
class BoxInputs:
    packages: list[str]
    requirements: list[str]
    sources: list[Path]
    ca_certs: list[Path]
    apt_options: list[str]
    pubkey: Path
    extra: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        h = hashlib.sha256()

        def add(label: str, data: bytes) -> None:
            h.update(f"{label}\0{len(data)}\0".encode())
            h.update(data)

        add("builder", Path(__file__).read_bytes())
        add("packages", "\n".join(self.packages).encode())
        add("requirements", "\n".join(self.requirements).encode())
        add("apt-options", "\n".join(self.apt_options).encode())
        for path in self.sources + self.ca_certs:
            add(str(path), path.read_bytes())
        add("pubkey", self.pubkey.read_bytes())
        for key, value in sorted(self.extra.items()):
            add(key, value.encode())
        return h.hexdigest()[:16]


def gather_inputs(checkout: Path | None = None) -> BoxInputs:
    checkout = checkout or checkout_root()
    sources = debian_sources(host_sources())
    if not sources:
        raise LabError("no Debian apt source on this host (/etc/apt/sources.list{,.d}); the box installs from it")
    return BoxInputs(
        packages=box_packages(checkout),
        requirements=python_requirements(checkout),
        sources=sources,
        ca_certs=host_ca_certs(),
        apt_options=host_apt_options(),
        pubkey=vagrant_public_key(),
        extra={"project-layout": project_layout(checkout)},
    )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("FLEET_BOX_CACHE", Path(base) / "fleet-py" / "boxes"))


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))


def installed_box_hash(name: str = BOX_NAME) -> str | None:
    """The input hash recorded in the metadata.json of the box Vagrant holds under `name`."""
    for meta in (vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-")).glob("*/libvirt/metadata.json"):
        try:
            return json.loads(meta.read_text()).get("fleet_box_hash")
        except (OSError, ValueError):
            return None
    return None


def _log(msg: str) -> None:
    print(f"fleet-lab box: {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), check=True, **kwargs)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]}: not installed (apt-get install {' '.join(BUILD_PACKAGES)})") from None
    except subprocess.CalledProcessError as exc:
        out = exc.stderr.decode(errors="replace")[-2000:] if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise LabError(f"{' '.join(cmd[:3])}...: exit {exc.returncode} {out.strip()}") from None


def _fetch_wheels(requirements: Sequence[str], dest: Path) -> None:
    """Wheels of the requirements and their dependencies, fetched by the host's pip (its index,
    find-links and certificates), for the box's CPython (Debian 12: 3.11)."""
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
          "--implementation", "cp", "-d", str(dest), *requirements], capture_output=True)


def _customize_script(inputs: BoxInputs, wheels: Path, project: Path) -> str:
    """The mmdebstrap customize hook (runs on the host with the root directory as $1)."""
    reqs = " ".join(f"'{r}'" for r in inputs.requirements)
    key = inputs.pubkey.read_text().strip()
    return f"""set -eu
R="$1"
echo fleet-box > "$R/etc/hostname"
printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\tfleet-box\\n' > "$R/etc/hosts"
printf 'LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\\n' > "$R/etc/fstab"
printf 'auto lo\\niface lo inet loopback\\n\\nauto eth0\\niface eth0 inet dhcp\\n' > "$R/etc/network/interfaces"
mkdir -p "$R/etc/ssh/sshd_config.d"
printf 'UseDNS no\\nPasswordAuthentication yes\\n' > "$R/etc/ssh/sshd_config.d/vagrant.conf"
# the VM's own etcd members are fleet's; Debian's single-member etcd stays off
chroot "$R" systemctl disable etcd.service nginx.service 2>/dev/null || true
chroot "$R" systemctl mask etcd.service
chroot "$R" useradd -m -s /bin/bash -G sudo vagrant
echo vagrant:vagrant | chroot "$R" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > "$R/etc/sudoers.d/vagrant"; chmod 440 "$R/etc/sudoers.d/vagrant"
install -d -m 700 -o 1000 -g 1000 "$R/home/vagrant/.ssh"
echo '{key}' > "$R/home/vagrant/.ssh/authorized_keys"
chown 1000:1000 "$R/home/vagrant/.ssh/authorized_keys"; chmod 600 "$R/home/vagrant/.ssh/authorized_keys"
chroot "$R" update-ca-certificates >/dev/null
# pip in the VM: the host's CA trust, no index (the project's dependencies are in {VENV})
printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\ndisable-pip-version-check = true\\n' > "$R/etc/pip.conf"
mkdir -p "$R/tmp/wheels" && cp {wheels}/* "$R/tmp/wheels/"
chroot "$R" python3 -m venv {VENV}
chroot "$R" {VENV}/bin/pip install -q --no-index --find-links /tmp/wheels {reqs}
# the project itself, editable from {CHECKOUT} (where Vagrant syncs the checkout): its console
# scripts and import paths exist already, so provisioning needs no pip run (~100 s under TCG)
mkdir -p "$R{CHECKOUT}" && cp -a {project}/. "$R{CHECKOUT}/"
chroot "$R" {VENV}/bin/pip install -q --no-index --no-deps --no-build-isolation -e {CHECKOUT}
rm -rf "$R/tmp/wheels"
# the box boots fast without a console login or waiting for the network at boot
chroot "$R" systemctl mask getty@tty1.service 2>/dev/null || true
rm -f "$R/etc/machine-id" "$R/var/lib/dbus/machine-id"; : > "$R/etc/machine-id"
"""


def _grub_cfg(root: Path) -> str:
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    initrds = sorted(root.glob("boot/initrd.img-*"))
    if not kernels or not initrds:
        raise LabError(f"{root}/boot: no kernel or initrd after mmdebstrap")
    return (
        "set timeout=0\n"
        "insmod part_msdos\ninsmod ext2\n"
        f"search --no-floppy --label --set=root {ROOT_LABEL}\n"
        f"linux /boot/{kernels[-1].name} root=LABEL={ROOT_LABEL} ro net.ifnames=0 biosdevname=0 "
        "console=tty0 console=ttyS0,115200 quiet\n"
        f"initrd /boot/{initrds[-1].name}\n"
        "boot\n"
    )


def _make_disk(root: Path, raw: Path, work: Path) -> None:
    """A raw disk: MBR with one Linux partition at 1 MiB, ext4 from `root`, GRUB in the MBR gap."""
    size = DISK_GIB << 30
    with open(raw, "wb") as fh:
        fh.truncate(size)
    _run(["sfdisk", "-q", str(raw)], input=b"label: dos\nstart=2048, type=83, bootable\n", capture_output=True)
    part_kib = (size - PART_OFFSET) // 1024
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(root),
          "-E", f"offset={PART_OFFSET}", str(raw), f"{part_kib}k"], capture_output=True)
    core = work / "core.img"
    _run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-p", "(hd0,msdos1)/boot/grub", *GRUB_MODULES],
         capture_output=True)
    if core.stat().st_size > PART_OFFSET - 512:
        raise LabError(f"{core}: {core.stat().st_size} bytes does not fit before the partition")
    boot_img = Path("/usr/lib/grub/i386-pc/boot.img")
    if not boot_img.is_file():
        raise LabError(f"{boot_img}: missing (apt-get install grub-pc-bin)")
    with open(raw, "r+b") as fh:
        fh.write(boot_img.read_bytes()[:440])  # the boot code; the partition table at 446 stays
        fh.seek(512)
        fh.write(core.read_bytes())


def _write_grub_cfg(root: Path) -> None:
    grub_dir = root / "boot" / "grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(_grub_cfg(root))


def build_box_file(inputs: BoxInputs, out: Path, digest: str) -> None:
    """Build the .box file at `out` (a tar of box.img, metadata.json and a Vagrantfile)."""
    for tool in HOST_TOOLS:
        if shutil.which(tool) is None:
            raise LabError(f"{tool}: not installed (apt-get install {' '.join(BUILD_PACKAGES)})")
    if os.geteuid() != 0:
        raise LabError("building the box needs root (mmdebstrap's root mode, chroot)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-box-", dir=out.parent) as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        wheels.mkdir()
        started = time.monotonic()
        _log(f"fetching wheels of {len(inputs.requirements)} requirements with the host's pip")
        _fetch_wheels(inputs.requirements, wheels)
        root = work / "root"
        hook = work / "customize.sh"
        project = work / "project"
        _copy_project(checkout_root(), project)
        hook.write_text(_customize_script(inputs, wheels, project))
        _log(f"mmdebstrap {SUITE} with {len(inputs.packages)} packages (a few minutes)")
        cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
               f"--include={','.join(inputs.packages)}",
               *(f"--aptopt={opt}" for opt in inputs.apt_options),
               "--aptopt=APT::Install-Recommends \"false\";",
               "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
               "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
               "--setup-hook=mkdir -p \"$1/usr/local/share/ca-certificates\"",
               *(f"--setup-hook=cp {c} \"$1/usr/local/share/ca-certificates/\"" for c in inputs.ca_certs),
               f"--customize-hook=sh {hook} \"$1\"",
               "--customize-hook=rm -rf \"$1/var/cache/apt/archives\"/*.deb \"$1/var/lib/apt/lists\"/*_Packages",
               SUITE, str(root), *(str(s) for s in inputs.sources)]
        _run(cmd, capture_output=True)
        # the box keeps the host's Debian sources (and its CA trust, done in the hook)
        for src in inputs.sources:
            shutil.copy(src, root / "etc/apt/sources.list.d" / src.name)
        _write_grub_cfg(root)
        _log(f"root filesystem ready after {time.monotonic() - started:.0f}s; writing the disk")
        raw = work / "disk.raw"
        _make_disk(root, raw, work)
        shutil.rmtree(root)
        box_dir = work / "box"
        box_dir.mkdir()
        _run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(box_dir / "box.img")], capture_output=True)
        raw.unlink()
        (box_dir / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB, "fleet_box_hash": digest}))
        (box_dir / "Vagrantfile").write_text(
            'Vagrant.configure("2") do |config|\n'
            '  config.vm.provider :libvirt do |lv|\n    lv.disk_bus = "virtio"\n  end\nend\n')
        partial = out.with_suffix(".partial")
        _run(["tar", "-C", str(box_dir), "-cf", str(partial), "metadata.json", "Vagrantfile", "box.img"])
        partial.rename(out)
        _log(f"built {out} ({out.stat().st_size >> 20} MB) in {time.monotonic() - started:.0f}s")


def drop_base_volumes(name: str = BOX_NAME) -> list[str]:
    """Delete vagrant-libvirt's copies of an earlier box of this name from libvirt's default pool
    (`<name>_vagrant_box_image_0_<added>_box.img`, uploaded on the first `vagrant up`): they are
    never used again once the box is replaced. One that a VM's disk is based on stays. Best effort:
    nothing if libvirtd does not answer."""
    from . import vmhost

    if not vmhost.libvirt_answers():
        return []
    prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    lines = vmhost.virsh("vol-list", vmhost.POOL, check=False).stdout.splitlines()[2:]
    vols = [line.split()[0] for line in lines if line.strip()]
    in_use = "".join(vmhost.virsh("vol-dumpxml", v, "--pool", vmhost.POOL, check=False).stdout
                     for v in vols if not v.startswith(prefix))
    dropped = [v for v in vols if v.startswith(prefix) and f"/{v}<" not in in_use]
    for vol in dropped:
        vmhost.virsh("vol-delete", vol, "--pool", vmhost.POOL, check=False)
    return dropped


def ensure_box(cache_dir: Path | None = None, name: str = BOX_NAME, force: bool = False,
               add: bool = True) -> tuple[Path, str, bool]:
    """Build the box unless one with the same input hash is cached; add it to Vagrant unless
    Vagrant holds that hash already. Returns (box file, hash, whether it was built)."""
    inputs = gather_inputs()
    digest = inputs.digest()
    cache_dir = cache_dir or default_cache_dir()
    out = cache_dir / f"fleet-debian12-{digest}.box"
    built = False
    if force or not out.is_file():
        build_box_file(inputs, out, digest)
        built = True
        for old in cache_dir.glob("fleet-debian12-*.box"):  # one cached box: the current inputs'
            if old != out:
                old.unlink()
    else:
        _log(f"inputs unchanged (hash {digest}): reusing {out}")
    if add:
        if installed_box_hash(name) == digest and not built:
            _log(f"vagrant already holds {name} of hash {digest}")
        else:
            _log(f"vagrant box add --force --name {name}")
            _run(["vagrant", "box", "add", "--force", "--name", name, str(out)], capture_output=True)
            drop_base_volumes(name)
    return out, digest, built
