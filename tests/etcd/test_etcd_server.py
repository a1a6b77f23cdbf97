"""fleetlab/testing/etcd.py's throw-away servers: their data where $FLEET_ETCD_DATA_PARENT says
(tests/conftest.py: a tmpfs, so that no test waits on fsync), removed with the server."""

from __future__ import annotations

import os
from pathlib import Path

from fleetlab.testing.etcd import DATA_PARENT_ENV, EtcdServer


def test_data_where_the_environment_says_and_removed_with_the_server(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_PARENT_ENV, str(tmp_path))
    with EtcdServer() as server:
        assert server.data_dir.parent == tmp_path and (server.data_dir / "data").is_dir()
    assert not server.data_dir.exists()


def test_the_tests_servers_are_on_a_tmpfs(etcd_server):
    if os.access("/dev/shm", os.W_OK):
        assert etcd_server.data_dir.parent == Path("/dev/shm")


class _Impostor:
    """Another server on a port: answers etcd's health check as a healthy etcd would."""

    def __enter__(self):
        import http.server
        import threading

        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b'{"health":"true"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Health)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_picked_port_taken_by_another_healthy_server_is_picked_again(monkeypatch):
    """The race seen under load: the port free_port picked was bound by another server before
    our etcd bound it; that server answered the health check, and the test paused its own
    (exited) etcd while the other kept answering. Now the ready check asks whether our process
    listens on the port, and a server that lost its port picks a new one."""
    import fleetlab.testing.etcd as etcd_module

    with _Impostor() as impostor:
        real_free_port = etcd_module.free_port
        handed = []

        def racy_free_port(host="127.0.0.1"):
            port = impostor.port if not handed else real_free_port(host)
            handed.append(port)
            return port

        monkeypatch.setattr(etcd_module, "free_port", racy_free_port)
        with EtcdServer() as server:
            assert handed[0] == impostor.port and server.client_port != impostor.port
            assert etcd_module.listens_on(server.process.pid, server.client_port)
            assert not etcd_module.listens_on(server.process.pid, impostor.port)


def test_a_given_port_that_is_taken_fails_with_the_reason():
    with _Impostor() as impostor:
        server = EtcdServer(client_port=impostor.port)
        try:
            server.start(timeout=20)
        except RuntimeError as error:
            assert "address already in use" in str(error), error
        else:
            server.stop()
            raise AssertionError("etcd started on a port another server holds")
        assert not server.data_dir.exists()


def test_listens_on_tells_our_socket_from_others():
    import socket

    from fleetlab.testing.etcd import listens_on

    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        port = mine.getsockname()[1]
        assert not listens_on(os.getpid(), port)  # bound, not listening
        mine.listen()
        assert listens_on(os.getpid(), port)
        assert not listens_on(os.getppid(), port)
