"""The Dask executor's address check (batch/executors.py): a service that is not Dask is one
clear line (issue 18); a real scheduler passes the probe."""

from __future__ import annotations

import pytest

from _cli_run import _err_lines, cli


@pytest.fixture
def nonsense_server():
    """A real local TCP server that answers every connection like a web server would."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    conn.settimeout(1.0)
                    conn.recv(4096)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=5)
    srv.close()


def test_dask_address_of_another_service_is_one_clear_line(patch, tmp_path, nonsense_server):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    proc = cli(
        "segment", patch, "--mpp", "0.5", "--out", out, "--device", "cpu", "--dask", nonsense_server, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and f"{nonsense_server} is not a Dask scheduler" in lines[0], proc.stderr
    assert "EiB" not in proc.stderr and "allocate" not in proc.stderr
    assert not out.exists()


def test_real_scheduler_passes_the_probe():
    distributed = pytest.importorskip("distributed")
    from napari_uam.batch.executors import probe_scheduler

    with distributed.LocalCluster(
        n_workers=0, processes=False, dashboard_address=None, protocol="tcp://", scheduler_port=0, host="127.0.0.1"
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        probe_scheduler(cluster.scheduler_address)  # a real scheduler's handshake passes
