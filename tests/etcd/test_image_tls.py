"""The image server over mutual TLS (issue 17): machines with certificates of the cluster CA
(made by fleetd.pki in the test) fetch images from each other; a client without a certificate,
or with one from another CA, is refused at the handshake. Real image stores, real etcd."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from fleetd.api.listeners import server_ssl_context
from fleetd.wire import client_ssl_context
from fleetd.container.node import NodeContainers
from fleetd.container.render import NodeFacts
from fleetd.images import ImageStore, build_busybox_image
from fleetd.images.server import API, ImageServer
from fleetd.pki import ClusterPKI
from fleetd.registry.images import ImageDirectory
from fleetd.unit.file import UnitFile

pytestmark = pytest.mark.etcd

A, B = "a" * 32, "b" * 32


@pytest.fixture(scope="module")
def pkis(tmp_path_factory):
    cluster = ClusterPKI(tmp_path_factory.mktemp("pki") / "cluster")
    cluster.init()
    cluster.machine("a", ["127.0.0.1"])
    cluster.machine("b", ["127.0.0.1"])
    cluster.client("viewer", "read-only")
    rogue = ClusterPKI(tmp_path_factory.mktemp("pki") / "rogue")
    rogue.init()
    rogue.machine("a", ["127.0.0.1"])
    return cluster, rogue


def ctx(pki: ClusterPKI, name: str, server: bool = False) -> ssl.SSLContext:
    out = pki.paths(name)
    make = server_ssl_context if server else client_ssl_context
    return make(str(out.ca), str(out.cert), str(out.key))


async def test_images_between_machines_over_mutual_tls(registry, tmp_path, pkis):
    cluster, rogue = pkis
    store_a, store_b = ImageStore(tmp_path / "a"), ImageStore(tmp_path / "b")
    image = store_a.import_path(build_busybox_image(tmp_path / "rootfs"), "busybox")
    directory = ImageDirectory(registry)
    lease = await registry.grant_lease(30)
    async with ImageServer(store_a, "127.0.0.1", 0, ssl_context=ctx(cluster, "a", server=True)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        node_a = NodeContainers(store_a, NodeFacts(images_dir=str(store_a.root)), A, directory=directory,
                                server_url=server.url, client_ssl=ctx(cluster, "a"))
        node_b = NodeContainers(store_b, NodeFacts(images_dir=str(store_b.root)), B, directory=directory,
                                client_ssl=ctx(cluster, "b"))
        assert await node_a.publish(lease)
        unit = UnitFile.parse("[Unit]\nDescription=t\n\n[X-Container]\nImage=busybox\nCommand=httpd -f\n")
        text = (await node_b.texts({"web.service": unit}))["web.service"]
        assert f"--image={image.digest}" in text and store_b.get("busybox").digest == image.digest

        url = f"{server.url}{API}"
        async with aiohttp.ClientSession() as session:
            # any certificate of the cluster CA reads (a client certificate too)
            async with session.get(url, ssl=ctx(cluster, "viewer")) as resp:
                assert resp.status == 200 and (await resp.json())["images"][0]["digest"] == image.digest
            no_cert = ssl.create_default_context(cafile=str(cluster.ca_path))
            no_cert.check_hostname = False
            for bad in (no_cert, ctx(rogue, "a")):
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionResetError)):
                    async with session.get(url, ssl=bad) as resp:
                        await resp.read()
            with pytest.raises(aiohttp.ClientError):  # and no plaintext at all
                async with session.get(url.replace("https:", "http:")) as resp:
                    await resp.read()
    await registry.revoke_lease(lease)
