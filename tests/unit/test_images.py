"""The local image store: imports (directory, tarball, OCI layout, docker save), whiteouts,
safe extraction, content digests, names, removal and export. Real files, run as root."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from fleetd.errors import ImageError, ImageNotFound, UnsafeArchive
from fleetd.images import ImageStore, build_busybox_image
from fleetd.images.tree import tree_digest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image imports keep owners: needs root")


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busybox_dir(tmp_path_factory) -> Path:
    return build_busybox_image(tmp_path_factory.mktemp("bb") / "rootfs")


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def _info(name: str, *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, data: bytes = b"",
          linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.mtime = 1_700_000_000
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_bytes(entries, *, base_dir: Path | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if base_dir is not None:
            tf.add(base_dir, arcname=".")
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info, _ = _info(name, data=data)
            tf.addfile(info, io.BytesIO(data))
    return path


def all_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# The two layers used for the OCI and docker-save archives:
#   layer 1: the busybox tree + etc/old.conf, opq/a, opq/sub/b
#   layer 2: whiteout of etc/old.conf, opq/ made opaque (opq/new written *before* the
#            marker, to check the marker does not remove this layer's own files),
#            a new www/index.html
NEW_INDEX = b"<html>layer two</html>\n"


def layers(busybox_dir: Path) -> tuple[bytes, bytes]:
    layer1 = tar_bytes([
        _info("etc/old.conf", data=b"old\n"),
        _info("opq", kind=tarfile.DIRTYPE, mode=0o755),
        _info("opq/a", data=b"a\n"),
        _info("opq/sub", kind=tarfile.DIRTYPE, mode=0o755),
        _info("opq/sub/b", data=b"b\n"),
    ], base_dir=busybox_dir)
    layer2 = tar_bytes([
        _info("etc/.wh.old.conf"),
        _info("opq", kind=tarfile.DIRTYPE, mode=0o755),
        _info("opq/new", data=b"new\n"),
        _info("opq/.wh..wh..opq"),
        _info("www/index.html", data=NEW_INDEX),
    ])
    return layer1, layer2


def expected_tree(busybox_dir: Path, dest: Path) -> Path:
    """What the two layers must produce, built by hand."""
    shutil.copytree(busybox_dir, dest, symlinks=True)
    os.chmod(dest, 0o755)
    (dest / "opq").mkdir(mode=0o755)
    (dest / "opq" / "new").write_bytes(b"new\n")
    (dest / "www" / "index.html").write_bytes(NEW_INDEX)
    for p in (dest / "opq" / "new", dest / "www" / "index.html"):
        os.chmod(p, 0o644)
    return dest


def build_oci_archive(busybox_dir: Path, out: Path, *, corrupt_layer: bool = False) -> tuple[Path, str]:
    layer1, layer2 = layers(busybox_dir)
    layer2_gz = gzip.compress(layer2, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/www"},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [sha(layer1), sha(layer2)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer1),
             "size": len(layer1)},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": sha(layer2_gz), "size": len(layer2_gz)},
        ]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    ).encode()
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    for blob in (config, manifest, layer1, layer2_gz):
        files[f"blobs/sha256/{sha(blob)[7:]}"] = blob
    if corrupt_layer:
        files[f"blobs/sha256/{sha(layer1)[7:]}"] = layer1[:-1024] + b"\0" * 1023 + b"x"
    return write_tar(out, files), sha(manifest)


def build_docker_archive(busybox_dir: Path, out: Path, layer_paths=None) -> Path:
    layer1, layer2 = layers(busybox_dir)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["sh"]}}).encode()
    paths = layer_paths or [f"{sha(layer1)[7:]}/layer.tar", f"{sha(layer2)[7:]}/layer.tar"]
    manifest = json.dumps([{"Config": f"{sha(config)[7:]}.json", "RepoTags": ["busybox:lnx"],
                            "Layers": paths}]).encode()
    files = {"manifest.json": manifest, f"{sha(config)[7:]}.json": config,
             paths[0]: layer1, paths[1]: layer2}
    return write_tar(out, files)


# -- busybox builder ---------------------------------------------------------------------


def test_busybox_image_layout(busybox_dir, tmp_path):
    bb = busybox_dir / "bin" / "busybox"
    assert bb.is_file() and os.access(bb, os.X_OK)
    assert (busybox_dir / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    for applet in ("sh", "httpd", "sleep", "cat", "ls", "wget", "id", "hostname"):
        link = busybox_dir / "bin" / applet
        assert link.is_symlink() and os.readlink(link) == "busybox", applet
    passwd = (busybox_dir / "etc" / "passwd").read_text().splitlines()
    assert [line.split(":")[:3] for line in passwd] == [["root", "x", "0"], ["nobody", "x", "65534"]]
    assert "fleet busybox image" in (busybox_dir / "www" / "index.html").read_text()
    assert stat.S_IMODE(os.stat(busybox_dir / "tmp").st_mode) == 0o1777
    # deterministic: a second build has the same tree digest
    again = build_busybox_image(tmp_path / "again")
    assert tree_digest(again) == tree_digest(busybox_dir)
    with pytest.raises(ImageError, match="not empty"):
        build_busybox_image(busybox_dir)


# -- imports -------------------------------------------------------------------------------


def test_import_directory_by_name_and_digest(store, busybox_dir):
    image = store.import_path(busybox_dir, "busybox")
    assert image.digest.startswith("sha256:") and len(image.digest) == 71
    assert image.names == ("busybox",) and image.source == "directory"
    assert image.size == (busybox_dir / "bin" / "busybox").stat().st_size + sum(
        p.stat().st_size for p in (busybox_dir / "etc").iterdir()) + (
        busybox_dir / "www" / "index.html").stat().st_size
    assert all_names(image.rootfs) == all_names(busybox_dir)
    assert os.readlink(image.rootfs / "bin" / "sh") == "busybox"
    assert stat.S_IMODE(os.stat(image.rootfs / "tmp").st_mode) == 0o1777
    # addressed by name, full digest, digest prefix
    assert store.get("busybox") == image
    assert store.get(image.digest) == image
    assert store.get(image.digest[:19]) == image
    assert store.get(image.digest[7:19]) == image
    # stable digest, stored once, second name
    again = store.import_path(busybox_dir, "bb2")
    assert again.digest == image.digest
    assert again.names == ("bb2", "busybox")
    assert [i.digest for i in store.list()] == [image.digest]
    assert len(os.listdir(store.root / "images")) == 1
    assert os.listdir(store.root / "tmp") == []


def test_digest_depends_on_content_mode_and_owner(store, busybox_dir, tmp_path):
    base = store.import_path(busybox_dir, "a").digest
    variant = tmp_path / "variant"
    shutil.copytree(busybox_dir, variant, symlinks=True)
    os.chmod(variant, 0o755)
    assert store.import_path(variant, "same").digest == base   # mtimes do not count
    os.chmod(variant / "etc" / "hosts", 0o600)
    d_mode = store.import_path(variant, "mode").digest
    os.chown(variant / "etc" / "hosts", 1, 1)
    d_owner = store.import_path(variant, "owner").digest
    (variant / "etc" / "hosts").write_text("changed\n")
    d_content = store.import_path(variant, "content").digest
    assert len({base, d_mode, d_owner, d_content}) == 4


def test_import_tarballs_give_the_directory_digest(store, busybox_dir, tmp_path):
    want = store.import_path(busybox_dir, "dir").digest
    plain = tmp_path / "bb.tar"
    with tarfile.open(plain, "w") as tf:
        tf.add(busybox_dir, arcname=".")
    gz = tmp_path / "bb.tar.gz"
    with tarfile.open(gz, "w:gz", compresslevel=1) as tf:  # (level 9, the default, 4x the CPU: any level reads the same)
        tf.add(busybox_dir, arcname="")   # no "./" prefix this time
    for path, name in ((plain, "plain"), (gz, "gz")):
        image = store.import_path(path, name)
        assert image.digest == want, name
    assert store.get("gz").rootfs.joinpath("bin", "busybox").is_file()


def test_import_oci_layout_applies_layers_and_whiteouts(store, busybox_dir, tmp_path):
    archive, manifest_digest = build_oci_archive(busybox_dir, tmp_path / "oci.tar")
    image = store.import_path(archive, "oci")
    root = image.rootfs
    assert image.source == "oci" and image.source_digest == manifest_digest
    assert image.config.cmd == ("sh",) and image.config.workdir == "/www"
    assert (root / "bin" / "busybox").is_file() and os.readlink(root / "bin" / "sh") == "busybox"
    assert not (root / "etc" / "old.conf").exists()          # whiteout
    assert sorted(os.listdir(root / "opq")) == ["new"]         # opaque: a, sub/ gone
    assert (root / "www" / "index.html").read_bytes() == NEW_INDEX
    assert not [p for p in root.rglob(".wh.*")]
    # exactly the tree built by hand
    want = store.import_path(expected_tree(busybox_dir, tmp_path / "expected"), "expected")
    assert image.digest == want.digest
    # the same layout as a directory, and a second import: same digest
    extracted = tmp_path / "oci-dir"
    with tarfile.open(archive) as tf:
        tf.extractall(extracted)
    assert store.import_path(extracted, "oci-dir").digest == image.digest
    assert store.import_path(archive, "oci-again").digest == image.digest


def test_import_oci_index_selects_linux_platform(store, busybox_dir, tmp_path):
    inner, manifest_digest = build_oci_archive(busybox_dir, tmp_path / "inner.tar")
    with tarfile.open(inner) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    index = json.loads(files["index.json"])
    desc = index["manifests"][0]
    other = dict(desc, digest="sha256:" + "0" * 64,
                 platform={"os": "linux", "architecture": "s390x-nonexistent"})
    nested = json.dumps({"schemaVersion": 2,
                         "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": [other, dict(desc, platform={"os": "linux",
                                                                   "architecture": "amd64"})]}).encode()
    files[f"blobs/sha256/{sha(nested)[7:]}"] = nested
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(nested),
        "size": len(nested)}]}).encode()
    image = store.import_path(write_tar(tmp_path / "nested.tar", files), "nested")
    assert image.source_digest == manifest_digest
    assert not (image.rootfs / "etc" / "old.conf").exists()


def test_import_docker_save_archive(store, busybox_dir, tmp_path):
    image = store.import_path(build_docker_archive(busybox_dir, tmp_path / "save.tar"), "docker")
    assert image.source == "docker-archive"
    assert image.config.cmd == ("sh",)
    assert sorted(os.listdir(image.rootfs / "opq")) == ["new"]
    assert not (image.rootfs / "etc" / "old.conf").exists()
    oci_archive, _ = build_oci_archive(busybox_dir, tmp_path / "oci.tar")
    oci = store.import_path(oci_archive, "oci")
    assert oci.digest == image.digest          # same layers, same tree, same digest
    assert oci.source == "docker-archive"      # metadata is the first import's
    assert store.get("docker").names == ("docker", "oci")


def test_corrupt_oci_blob_is_rejected(store, busybox_dir, tmp_path):
    archive, _ = build_oci_archive(busybox_dir, tmp_path / "bad.tar", corrupt_layer=True)
    with pytest.raises(UnsafeArchive, match="does not match"):
        store.import_path(archive, "bad")
    assert store.list() == []
    assert os.listdir(store.root / "tmp") == []


# -- safe extraction ------------------------------------------------------------------------


def test_dotdot_member_is_rejected(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tmp_path / "evil.tar"
    rel_to_outside = os.path.relpath(outside / "pwned", tmp_path / "store" / "tmp" / "x" / "rootfs")
    with tarfile.open(evil, "w") as tf:
        for name in ("ok.txt", rel_to_outside):
            info, data = _info(name, data=b"pwned\n")
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchive, match=r"escapes the image root"):
        store.import_path(evil, "evil")
    assert not (outside / "pwned").exists()
    assert store.list() == [] and os.listdir(store.root / "tmp") == []


def test_symlinks_cannot_lead_extraction_outside(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    tarball = tmp_path / "links.tar"
    with tarfile.open(tarball, "w") as tf:
        for info, data in (
            _info("abs", kind=tarfile.SYMTYPE, linkname=str(outside)),
            _info("abs/pwned", data=b"1\n"),
            _info("rel", kind=tarfile.SYMTYPE, linkname="../../../../../../../../.."),
            _info("rel/pwned2", data=b"2\n"),
            _info("deep/x", kind=tarfile.SYMTYPE, linkname="/../../.."),
            _info("deep/x/pwned3", data=b"3\n"),
        ):
            tf.addfile(info, io.BytesIO(data) if data else None)
    image = store.import_path(tarball, "links")
    assert os.listdir(outside) == []
    root = image.rootfs
    # the links are stored as they are; what went "through" them stayed inside the root
    assert os.readlink(root / "abs") == str(outside)
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"1\n"
    assert (root / "pwned2").read_bytes() == b"2\n"
    assert (root / "pwned3").read_bytes() == b"3\n"


@pytest.mark.parametrize("linkname", ["../../../etc/passwd", "x/../../etc/passwd"])
def test_hardlink_escape_is_rejected(store, tmp_path, linkname):
    tarball = tmp_path / "hl.tar"
    with tarfile.open(tarball, "w") as tf:
        info, _ = _info("passwd", kind=tarfile.LNKTYPE, linkname=linkname)
        tf.addfile(info)
    with pytest.raises(UnsafeArchive, match="escapes"):
        store.import_path(tarball, "hl")
    assert store.list() == []


def test_absolute_hardlink_resolves_inside_the_root(store, tmp_path):
    tarball = tmp_path / "hl.tar"
    with tarfile.open(tarball, "w") as tf:
        info, data = _info("etc/passwd", data=b"inside\n")
        tf.addfile(info, io.BytesIO(data))
        info, _ = _info("copy", kind=tarfile.LNKTYPE, linkname="/etc/passwd")
        tf.addfile(info)
        info, _ = _info("missing", kind=tarfile.LNKTYPE, linkname="/etc/shadow")
        tf.addfile(info)
    with pytest.raises(ImageError, match="points at missing '/etc/shadow'"):
        store.import_path(tarball, "hl")


@pytest.mark.parametrize("case", ["oci-blob-digest", "docker-layer-path", "layer-member"])
def test_traversal_through_archive_metadata_is_rejected(store, busybox_dir, tmp_path, case):
    if case == "docker-layer-path":
        archive = build_docker_archive(busybox_dir, tmp_path / "a.tar",
                                       layer_paths=["../../outside.tar", "x/layer.tar"])
    else:
        archive, _ = build_oci_archive(busybox_dir, tmp_path / "oci.tar")
        with tarfile.open(archive) as tf:
            files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        manifest_name = "blobs/sha256/" + json.loads(files["index.json"])["manifests"][0]["digest"][7:]
        manifest = json.loads(files[manifest_name])
        if case == "oci-blob-digest":
            manifest["layers"][0]["digest"] = "sha256:../../../../etc/passwd"
        else:
            evil = tar_bytes([_info("../../escaped", data=b"x")])
            files[f"blobs/sha256/{sha(evil)[7:]}"] = evil
            manifest["layers"][1] = {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                     "digest": sha(evil), "size": len(evil)}
        new_manifest = json.dumps(manifest).encode()
        files[f"blobs/sha256/{sha(new_manifest)[7:]}"] = new_manifest
        index = json.loads(files["index.json"])
        index["manifests"][0]["digest"] = sha(new_manifest)
        files["index.json"] = json.dumps(index).encode()
        archive = write_tar(tmp_path / "evil.tar", files)
    with pytest.raises(UnsafeArchive):
        store.import_path(archive, "evil")
    assert store.list() == []
    assert not (tmp_path / "escaped").exists()


# -- names, removal, export -------------------------------------------------------------------


def test_names_and_removal(store, busybox_dir, tmp_path):
    image = store.import_path(busybox_dir, "one")
    store.tag("one", "two")
    assert store.get("two").names == ("one", "two")
    store.remove("one")                    # untag; content stays for "two"
    assert store.get(image.digest).names == ("two",)
    with pytest.raises(ImageNotFound) as err:
        store.get("one")
    assert str(err.value) == f'image "one" not found in {store.root}'
    store.remove("two")                    # last name: content goes too
    assert store.list() == [] and not (store.root / "images" / image.digest[7:]).exists()
    image = store.import_path(busybox_dir, "three")
    store.tag("three", "four")
    store.remove(image.digest)             # by digest: content and every name
    assert store.list() == [] and os.listdir(store.root / "names") == []
    with pytest.raises(ImageNotFound):
        store.remove("three")
    for bad in ("", "../x", "a/b", "sha256:abc", "-x", "x" * 129):
        with pytest.raises(ImageError, match="invalid image name"):
            store.import_path(busybox_dir, bad)


def test_export_then_import_elsewhere_keeps_the_digest(store, busybox_dir, tmp_path):
    archive, _ = build_oci_archive(busybox_dir, tmp_path / "oci.tar")
    image = store.import_path(archive, "oci")
    stream = b"".join(store.export(image.digest))
    assert len(stream) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(stream)) as tf:
        names = tf.getnames()
    assert "bin/busybox" in names and "opq/new" in names and "etc/old.conf" not in names
    other = ImageStore(tmp_path / "node2")
    copy = other.import_stream(io.BytesIO(stream), "busybox", expected_digest=image.digest)
    assert copy.digest == image.digest and copy.source == "stream"
    with pytest.raises(ImageError, match="expected sha256:0000"):
        ImageStore(tmp_path / "node3").import_stream(io.BytesIO(stream), "x",
                                                    expected_digest="sha256:" + "0" * 64)
    assert ImageStore(tmp_path / "node3").list() == []
    out = io.BytesIO()
    assert store.export_to("oci", out) == image.digest and out.getvalue() == stream
