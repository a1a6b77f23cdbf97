"""fleetctl's image commands: images, image import; and `cat --rendered` (what a machine
renders for a container unit, from its published facts and images)."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import tarfile
import tempfile
from pathlib import Path

import click

from fleetd.unit.container import container_spec, is_container_unit
from fleetd.errors import FleetError
from fleetd.model import Machine
from fleetctl import output
from fleetctl.client import FleetClient
from fleetctl.commands.common import CommandFailed, Globals, in_thread, run

DEFAULT_IMAGE_PORT = 7380


async def machine_records(g: Globals, image_port: int) -> list:
    """Every machine's image record: from etcd (etcd driver) or from its image server (API)."""
    return await g.client().image_records(image_port, warn=lambda text: click.echo(text, err=True))


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


@click.command("images")
@click.option("--full", is_flag=True, help="Full machine IDs and digests.")
@click.option("--no-legend", is_flag=True, help="Do not print a legend (column headers).")
@click.option("--output", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--image-port", default=DEFAULT_IMAGE_PORT, show_default=True, type=int,
              help="Port of the machines' image servers (API driver).")
@run
async def images_command(g: Globals, full: bool, no_legend: bool, output_format: str, image_port: int) -> int:
    """List the images each machine holds (one line per machine and image)."""
    records = await machine_records(g, image_port)
    if output_format == "json":
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    machines = {m.id: m for m in await g.client().machines()}
    rows = []
    for record in records:
        m = machines.get(record.machine_id)
        where = output.machine_full_legend(m, full) if m is not None else (
            record.machine_id if full else record.machine_id[:8] + "...")
        for image in record.images:
            digest = image.digest if full else image.digest.split(":", 1)[1][:12]
            rows.append([where, digest, ",".join(image.names) or "-", _size(image.size)])
    lines = [] if no_legend else ["MACHINE\tIMAGE\tNAMES\tSIZE"]
    lines += ["\t".join(r) for r in rows]
    if lines:
        click.echo("\n".join(lines))
    return 0


@click.group("image")
def image_group() -> None:
    """Manage images on the machines (import)."""


@image_group.command("build-busybox")
@click.argument("dest", type=click.Path())
@click.option("--busybox", default="/bin/busybox", show_default=True,
              help="The static busybox binary to copy (Debian: busybox-static).")
def image_build_busybox(dest: str, busybox: str) -> None:
    """Build a busybox image (no Python, no distribution) from Debian's busybox-static.

    DEST is a new directory (a root filesystem: bin/busybox and its applets, /etc/passwd, a page
    in /www for httpd) or, if it ends in .tar, a rootfs tarball. Import it with
    fleetctl image import DEST --name busybox --machine MACHINE. Two builds from the same binary
    have the same image digest.
    """
    from fleetd.images import build_busybox_image

    target = Path(dest)
    try:
        if target.suffix == ".tar":
            with tempfile.TemporaryDirectory(prefix="fleetctl-busybox-") as tmp:
                root = build_busybox_image(Path(tmp) / "rootfs", busybox)
                _tar_directory(root, target)
        else:
            build_busybox_image(target, busybox)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Built busybox image in {target}")


def _route_source(ip: str) -> str:
    """The local address the kernel would use to reach `ip` (nothing is sent)."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, 9))
        return probe.getsockname()[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def _local_machine_id(client: FleetClient) -> str:
    try:
        mine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""
    return mine if any(m.id == mine for m in await client.machines()) else ""


@image_group.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", default="", help="Name the image (default: none; refer to it by digest).")
@click.option("--machine", "machines", multiple=True,
              help="Machine ID (or unique prefix) to import on; repeatable (default: this machine).")
@click.option("--timeout", default=300.0, show_default=True, type=float, help="Seconds to wait for each import.")
@run
async def image_import(g: Globals, path: str, name: str, machines: tuple[str, ...], timeout: float) -> int:
    """Import an image archive on machines: a rootfs tarball (.tar/.tar.gz/...), an OCI image
    layout or `docker save` archive (tar), or a directory (rootfs or OCI layout).

    fleetctl serves the file over HTTP on the address that routes to the machine, writes an
    import request into etcd, and the machine's fleetd downloads, checks and imports it
    (etcd driver). The machine then publishes the image; others fetch it from there.
    """
    from fleetd.images.store import validate_name

    if name:
        try:
            validate_name(name)
        except FleetError as exc:
            raise CommandFailed(f"Error: {exc}") from None
    if g.driver_name != "etcd":
        raise CommandFailed("fleetctl image import needs the etcd driver (--driver=etcd --endpoint=<etcd URL>)")
    client = g.client()
    known = await client.machines()
    targets: list[Machine] = []
    for prefix in machines or [await _local_machine_id(client)]:
        if not prefix:
            raise CommandFailed("this host is not a fleet machine: give --machine MACHINE_ID")
        found = [m for m in known if m.id.startswith(prefix)]
        if len(found) != 1:
            raise CommandFailed(f"--machine {prefix}: matches {len(found)} machines (expected exactly one)")
        targets.append(found[0])
    with tempfile.TemporaryDirectory(prefix="fleetctl-import-") as tmp:
        source = Path(path)
        if source.is_dir():
            archive = Path(tmp) / "image.tar"
            await in_thread(_tar_directory, source, archive)
        else:
            archive = source
        digest = await in_thread(_sha256, archive)
        status = 0
        for machine in targets:
            status |= await _import_on(client, machine, archive, digest, name, timeout)
        return status


def _tar_directory(source: Path, archive: Path) -> None:
    with tarfile.open(archive, "w") as tar:
        tar.add(source, arcname=".")


async def _import_on(client: FleetClient, machine: Machine, archive: Path, sha256: str, name: str,
                     timeout: float) -> int:
    from aiohttp import web

    if not machine.public_ip:
        raise CommandFailed(f"machine {machine.id[:8]} has no public IP to download from us")
    host = _route_source(machine.public_ip)
    token = secrets.token_urlsafe(16)

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != token:
            raise web.HTTPNotFound()
        return web.FileResponse(archive)

    app = web.Application()
    app.router.add_get("/{token}/image", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        port = runner.addresses[0][1]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/{token}/image"
        answer = await client.import_image(machine.id, url, sha256, name, timeout)
    finally:
        await runner.cleanup()
    if answer is None:
        click.echo(f"Error: machine {machine.id[:8]} did not import {archive.name} within {timeout:g}s "
                   "(is its fleetd running?)", err=True)
        return 1
    if answer.state != "done":
        click.echo(f"Error: machine {machine.id[:8]}: import failed: {answer.error}", err=True)
        return 1
    click.echo(f"Imported {archive.name if archive.name != 'image.tar' else 'directory'} on {machine.id[:8]}"
               + (f" as {name}" if name else "") + f": {answer.digest}")
    return 0


# ---------------------------------------------------------------------------- cat --rendered


async def rendered_text(g: Globals, name: str, machine: str = "", image_port: int = DEFAULT_IMAGE_PORT) -> str:
    """What the unit's machine writes to disk for `name`, rendered here with the same pure
    function (fleetd/container/render.py) from the machine's published facts and images."""
    from fleetd.container.render import CannotRun, ImageInfo, NodeFacts, render_or_explain
    from fleetd.images.store import ImageStore

    client = g.client()
    info = await client.unit(name)
    if info is None:
        raise CommandFailed(f"Unit {name} not found")
    if not is_container_unit(info.file):
        return info.file.serialize()  # plain units are written as they are stored
    known = await client.machines()
    if machine:
        found = [m.id for m in known if m.id.startswith(machine)]
        if len(found) != 1:
            raise CommandFailed(f"--machine {machine}: matches {len(found)} machines (expected exactly one)")
        target = found[0]
    elif info.machine_id:
        target = info.machine_id
    elif info.is_global:
        raise CommandFailed(f"Unit {name} is global: give --machine to see what one machine renders")
    else:
        raise CommandFailed(f"Unit {name} is not scheduled to a machine yet (its rendering depends on the machine)")
    records = {r.machine_id: r for r in await machine_records(g, image_port)}
    record = records.get(target)
    if record is None:
        raise CommandFailed(f"machine {target[:8]} publishes no image record (is its fleetd running?)")
    facts = NodeFacts.from_json(record.facts)
    try:
        spec = container_spec(info.file, name)
    except FleetError:
        return render_or_explain(name, info.file, facts, None)
    local = record.find(spec.image)
    if local:
        img = local[0]
        rootfs = img.rootfs
    else:
        elsewhere = [i for r in records.values() for i in r.find(spec.image)]
        if not elsewhere:
            return render_or_explain(name, info.file, facts, CannotRun(
                f'image "{spec.image}" not found on this machine ({target[:8]}) nor on any other machine '
                "(see fleetctl images; import it with fleetctl image import)"))
        img = elsewhere[0]
        rootfs = str(ImageStore(facts.images_dir).rootfs_path(img.digest))
        click.echo(f"# note: {target[:8]} has no image {spec.image} yet; it fetches {img.digest[:19]} "
                   "before loading the unit (shown as it will be)", err=True)
    cfg = img.config or {}
    image = ImageInfo(ref=spec.image, digest=img.digest, rootfs=rootfs, env=tuple(cfg.get("env") or ()),
                      entrypoint=tuple(cfg.get("entrypoint") or ()), cmd=tuple(cfg.get("cmd") or ()),
                      workdir=str(cfg.get("workdir") or ""), user=str(cfg.get("user") or ""))
    return render_or_explain(name, info.file, facts, image)
