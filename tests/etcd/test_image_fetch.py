"""Images between machines, without a lab: two image stores, the image server, real etcd.

A machine publishes its images (P/images/<ID>) and serves them; another machine that must run
a container unit whose image it lacks fetches it (checked against the digest) before
rendering; image imports asked through the registry are answered by the machine's agent.
"""

from __future__ import annotations

import hashlib
import tarfile

import pytest
from aiohttp import web

from fleetd.container.marker import stored_hash_of
from fleetd.container.node import NodeContainers
from fleetd.container.render import NodeFacts
from fleetd.images import ImageStore, build_busybox_image
from fleetd.images.server import ImageServer
from fleetd.registry.images import ImageDirectory
from fleetd.unit.file import UnitFile

pytestmark = pytest.mark.etcd

A, B = "a" * 32, "b" * 32


def unit(body: str) -> UnitFile:
    return UnitFile.parse(f"[Unit]\nDescription=t\n\n[X-Container]\n{body}")


@pytest.fixture(scope="module")
def busybox_dir(tmp_path_factory):
    return build_busybox_image(tmp_path_factory.mktemp("bb") / "rootfs")


@pytest.fixture
async def two_machines(registry, tmp_path, busybox_dir):
    store_a, store_b = ImageStore(tmp_path / "a"), ImageStore(tmp_path / "b")
    image = store_a.import_path(busybox_dir, "busybox")
    directory = ImageDirectory(registry)
    lease = await registry.grant_lease(30)
    async with ImageServer(store_a, "127.0.0.1", 0) as server:
        node_a = NodeContainers(store_a, NodeFacts(images_dir=str(store_a.root)), A, directory=directory,
                                server_url=server.url)
        node_b = NodeContainers(store_b, NodeFacts(images_dir=str(store_b.root)), B, directory=directory)
        assert await node_a.publish(lease)
        yield node_a, node_b, image, lease
    await registry.revoke_lease(lease)


async def test_published_record(two_machines, registry):
    node_a, node_b, image, lease = two_machines
    records = await ImageDirectory(registry).list()
    assert [r.machine_id for r in records] == [A]
    (rec,) = records[0].images
    assert (rec.digest, rec.names, rec.rootfs) == (image.digest, ("busybox",), str(image.rootfs))
    assert records[0].url.startswith("http://127.0.0.1:")
    assert not await node_a.publish(lease)  # unchanged: not written again


async def test_missing_image_is_fetched_before_rendering(two_machines):
    node_a, node_b, image, _ = two_machines
    units = {"web.service": unit("Image=busybox\nCommand=httpd -f -p 8080\n")}
    assert not node_b.store.list()
    text = (await node_b.texts(units))["web.service"]
    fetched = node_b.store.get("busybox")
    assert fetched.digest == image.digest  # same content, verified against the digest
    assert f"--image={image.digest}" in text and "cannot run" not in text
    assert stored_hash_of(text) == units["web.service"].hash
    by_digest = {"d.service": unit(f"Image={image.digest[:20]}\nCommand=sh\n")}
    assert f"--image={image.digest}" in (await node_b.texts(by_digest))["d.service"]


async def test_image_that_exists_nowhere_renders_a_failing_unit(two_machines):
    _, node_b, _, _ = two_machines
    text = (await node_b.texts({"x.service": unit("Image=nosuchimage\nCommand=sh\n")}))["x.service"]
    assert 'image \\"nosuchimage\\" not found on this machine (bbbbbbbb) nor on any other machine' in text
    assert "exit 125" in text


async def test_command_missing_from_the_image_renders_a_failing_unit(two_machines):
    node_a, _, _, _ = two_machines
    texts = await node_a.texts({
        "a.service": unit("Image=busybox\nCommand=/usr/bin/nothere\n"),
        "b.service": unit("Image=busybox\nCommand=nothere -x\n"),
        "c.service": unit("Image=busybox\nCommand=httpd -f\n"),
        "d.service": unit("Image=busybox\nCommand=httpd -f\nRuntime=nspawn\nUser=nobody\n"),
    })
    assert 'command \\"/usr/bin/nothere\\" not found in image \\"busybox\\"' in texts["a.service"]
    assert 'command \\"nothere\\" not found in image \\"busybox\\"' in texts["b.service"]
    assert "PATH=" in texts["b.service"]
    assert "cannot run" not in texts["c.service"]
    assert "needs getent" in texts["d.service"]


async def test_import_request_answered_by_the_agent(two_machines, registry, busybox_dir, tmp_path):
    _, node_b, image, _ = two_machines
    archive = tmp_path / "bb.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(busybox_dir, arcname=".")
    data = archive.read_bytes()
    async def serve(request):
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/f", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    directory = ImageDirectory(registry)
    try:
        ok = await directory.request_import(B, f"http://127.0.0.1:{port}/f", hashlib.sha256(data).hexdigest(), "bb:2")
        bad = await directory.request_import(B, f"http://127.0.0.1:{port}/f", "0" * 64, "bb:3")
        assert await node_b.process_imports() == 2
        done = await directory.import_request(B, ok.id)
        failed = await directory.import_request(B, bad.id)
        assert (done.state, done.digest) == ("done", image.digest)
        assert failed.state == "failed" and "expected " + "0" * 64 in failed.error
        assert node_b.store.get("bb:2").digest == image.digest
        assert await node_b.process_imports() == 0  # answered requests are left alone
        await directory.delete_import(B, ok.id)
        await directory.delete_import(B, bad.id)
        assert await directory.import_requests(B) == []
    finally:
        await runner.cleanup()
