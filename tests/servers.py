"""Real servers for integration tests, started once per test session on
127.0.0.1 (free ports, temporary folders) and stopped by PID at the end.

The binaries come from Debian packages (``make test`` installs them:
redis-server, postgresql, mariadb-server). A missing binary is a failure,
not a skip: these tests are what the integrations are judged by.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

PGBIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Server:
    host: str
    port: int
    proc: subprocess.Popen
    extra: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


SBIN = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"])


def which(binary: str) -> Optional[str]:
    """A binary on PATH or in the sbin folders (server daemons live there,
    and a non-login PATH may not have them)."""
    return shutil.which(binary) or shutil.which(binary, path=SBIN)


def require(binary: str) -> str:
    path = which(binary) or (str(PGBIN / binary) if (PGBIN / binary).exists() else None)
    if path is None:
        pytest.fail(f"{binary} is not installed (make test installs it with apt-get)")
    return path


def _as_postgres():
    pw = pwd.getpwnam("postgres")
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Server]:
    binary = require("redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                d,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, proc)
            yield Server("127.0.0.1", port, proc)
        finally:
            stop(proc)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    initdb = require("initdb")
    postgres = require("postgres")
    port = free_port()
    root = tempfile.mkdtemp(prefix="pulsetrace-pg-")
    os.chmod(root, 0o755)
    data, sock = Path(root, "data"), Path(root, "sock")
    data.mkdir()
    sock.mkdir()
    pw = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if pw is not None:
        for p in (data, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    prefix = _as_postgres() if pw is not None else []
    subprocess.run(
        [
            *prefix,
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        [
            *prefix,
            postgres,
            "-D",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(sock),
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        time.sleep(0.2)
        yield Server("127.0.0.1", port, proc, {"user": "postgres", "dbname": "postgres"})
    finally:
        stop(proc, signal.SIGINT)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[Server]:
    mariadbd = require("mariadbd") if which("mariadbd") else require("mysqld")
    install = (
        require("mariadb-install-db")
        if which("mariadb-install-db")
        else require("mysql_install_db")
    )
    port = free_port()
    root = tempfile.mkdtemp(prefix="pulsetrace-my-")
    os.chmod(root, 0o755)
    data = Path(root, "data")
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            install,
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *user,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            f"--datadir={data}",
            "--bind-address=127.0.0.1",
            f"--port={port}",
            f"--socket={root}/my.sock",
            f"--pid-file={root}/my.pid",
            "--skip-grant-tables",
            "--skip-log-bin",
            *user,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, timeout=40)
        yield Server("127.0.0.1", port, proc, {"user": "root", "database": "mysql"})
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _rabbitmq_env(root: str, ports: dict[str, int]) -> dict[str, str]:
    """The environment of a private broker under ``root``: its own node
    name, ports, epmd and Erlang cookie (``HOME``), all on loopback."""
    return {
        **os.environ,
        "HOME": root,
        "RABBITMQ_NODENAME": f"pulsetrace{ports['amqp']}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(ports["amqp"]),
        "RABBITMQ_DIST_PORT": str(ports["dist"]),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(ports["epmd"]),
        "RABBITMQ_MNESIA_BASE": f"{root}/mnesia",
        "RABBITMQ_LOG_BASE": f"{root}/log",
        "RABBITMQ_ENABLED_PLUGINS_FILE": f"{root}/plugins",
        "RABBITMQ_PID_FILE": f"{root}/pid",
        "RABBITMQ_CONFIG_FILE": f"{root}/rabbitmq.conf",
    }


@contextlib.contextmanager
def rabbitmq() -> Iterator[Server]:
    """A RabbitMQ broker (Debian's rabbitmq-server) with the management
    plugin, AMQP and management API on free loopback ports, stopped (with
    its epmd) on exit. ``extra``: ``management_url``
    (``http://guest:guest@127.0.0.1:PORT``)."""
    binary = require("rabbitmq-server")
    ports = {name: free_port() for name in ("amqp", "dist", "epmd", "management")}
    root = tempfile.mkdtemp(prefix="pulsetrace-mq-")
    os.chmod(root, 0o755)
    for sub in ("mnesia", "log"):
        os.mkdir(f"{root}/{sub}")
    Path(root, "plugins").write_text("[rabbitmq_management].\n")
    Path(root, "pid").write_text("")
    Path(root, "rabbitmq.conf").write_text(
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {ports['management']}\n"
        "vm_memory_high_watermark.relative = 0.9\ndisk_free_limit.absolute = 1MB\n"
    )
    if os.geteuid() == 0:  # the server drops to the rabbitmq user
        pw = pwd.getpwnam("rabbitmq")
        for dirpath, _dirs, files in os.walk(root):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            for name in files:
                os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)
    env = _rabbitmq_env(root, ports)
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(ports["amqp"], proc, timeout=60)
        wait_for_port(ports["management"], proc, timeout=30)
        yield Server(
            "127.0.0.1",
            ports["amqp"],
            proc,
            {"management_url": f"http://guest:guest@127.0.0.1:{ports['management']}"},
        )
    finally:
        pid = Path(root, "pid").read_text().strip()
        if pid.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
            # epmd refuses to stop while the node is registered: wait for it to go.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                        break
                time.sleep(0.1)
        stop(proc)
        epmd = which("epmd")
        if epmd:
            subprocess.run(
                [epmd, "-kill"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[Server]:
    """See :func:`rabbitmq`."""
    with rabbitmq() as server:
        yield server
