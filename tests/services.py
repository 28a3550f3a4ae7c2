"""Real servers for the tests, started on loopback in private temporary folders and stopped
afterwards: PostgreSQL and MariaDB (Debian's packages), and a single-node Slurm with munge.

Each server gets its own data folder, port and socket, so a test run never touches the
machine's own instances (if any) nor another engineer's. The Debian packages come from
``scripts/install-system-deps.sh``; a missing one is an error that says so, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, wait_until


class ServiceError(RuntimeError):
    """A server could not be started; the message says what to install or read."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _need(path: str, package: str) -> str:
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if not found:
        raise ServiceError(f"{path} not found: install Debian's {package} "
                           "(bash scripts/install-system-deps.sh)")
    return found


def _private_dir(prefix: str, owner: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if owner:
        shutil.chown(path, owner, owner)
    return path


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def _pg_bin() -> Path:
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not roots:
        raise ServiceError("PostgreSQL's initdb not found: install Debian's postgresql")
    return roots[-1].parent


@dataclass
class Postgres:
    """A private PostgreSQL cluster on LISTEN:PORT (127.0.0.1 unless told) with database
    ``tunefleet``. With NETNS (tests/lab) the server runs in that network namespace, listening
    on its address there; this process reaches it through its Unix socket (``socket_url``)."""

    fsync: bool = False
    listen: str = "127.0.0.1"
    netns: str | None = None
    base: Path = field(init=False)
    port: int = field(init=False)

    @property
    def _client_host(self) -> str:
        return str(self.base) if self.netns else "127.0.0.1"

    def start(self) -> "Postgres":
        bin_ = _pg_bin()
        self.base = _private_dir("tunefleet-pg-", "postgres")
        self.port = free_port()
        _run(["runuser", "-u", "postgres", "--", str(bin_ / "initdb"), "-D",
              str(self.base / "data"), "-A", "trust", "-U", "postgres", "--no-sync"], "initdb")
        if self.listen != "127.0.0.1":  # the lab's other hosts: clients on its own subnet
            with open(self.base / "data" / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        self._launch()
        _run([str(bin_ / "psql"), "-h", self._client_host, "-p", str(self.port), "-U",
              "postgres", "-c", "CREATE DATABASE tunefleet"], "createdb")
        return self

    def _launch(self) -> None:
        """Start the server on the cluster made by ``start`` (again after ``restart``)."""
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses={self.listen} "
                "-c max_connections=200")
        if not self.fsync:
            opts += " -c fsync=off -c synchronous_commit=off"
        where = ["ip", "netns", "exec", self.netns] if self.netns else []
        _run([*where, "runuser", "-u", "postgres", "--", str(_pg_bin() / "pg_ctl"), "-D",
              str(self.base / "data"), "-o", opts, "-l", str(self.base / "log"), "-w", "-t",
              "60", "start"], "pg_ctl start")

    def restart(self, kill: bool = False, down: float = 0.0) -> None:
        """Stop the server (``pg_ctl -m fast``: clients' connections are cut, as in a restart
        for an upgrade; KILL: SIGKILL to the postmaster, as a crash), keep it down DOWN
        seconds, and start it again on the same data and port."""
        import time

        self.halt(kill)
        if down:
            time.sleep(down)  # the outage itself, not a synchronisation
        self.resume()

    def halt(self, kill: bool = False) -> None:
        """Stop the server and keep its data (``resume`` starts it again)."""
        if kill:
            pid = int((self.base / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 9)
            wait_until(lambda: not _running(pid), 30, "the killed postmaster to exit")
        else:
            _run(["runuser", "-u", "postgres", "--", str(_pg_bin() / "pg_ctl"), "-D",
                  str(self.base / "data"), "-m", "fast", "-w", "stop"], "pg_ctl stop")

    def resume(self) -> None:
        """Start the halted server again. After SIGKILL it refuses to start while a backend
        of the old one still holds its shared memory (they exit once they notice): start it
        until it starts."""
        last: list[str] = []

        def started() -> bool:
            try:
                self._launch()
                return True
            except ServiceError as exc:
                last[:] = [str(exc)]
                return False

        wait_until(started, 60, lambda: f"PostgreSQL to start again: {last}", interval=0.5)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@{self.listen}:{self.port}/tunefleet"

    def socket_url(self, name: str = "tunefleet") -> str:
        """The database NAME through the server's Unix socket (from outside its namespace)."""
        return f"postgresql+psycopg2://postgres@/{name}?host={self.base}&port={self.port}"

    def new_database(self, name: str) -> str:
        _run([str(_pg_bin() / "psql"), "-h", self._client_host, "-p", str(self.port), "-U",
              "postgres", "-c", f"CREATE DATABASE {name}"], "createdb")
        return f"postgresql+psycopg2://postgres@{self.listen}:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(_pg_bin() / "pg_ctl"), "-D",
                        str(self.base / "data"), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class MariaDB:
    """A private MariaDB server on 127.0.0.1:PORT; user ``tf``/``tf`` owns database ``tunefleet``."""

    base: Path = field(init=False)
    port: int = field(init=False)
    proc: subprocess.Popen | None = field(init=False, default=None)

    def start(self) -> "MariaDB":
        install = _need("mariadb-install-db", "mariadb-server")
        self.base = _private_dir("tunefleet-my-", "mysql")
        # Its own folder for temporary tables: in the shared /tmp, a file of one went missing
        # under a test ("Error on delete of '/tmp/#sql-temptable-...'") while other servers
        # of parallel test runs started and stopped.
        (self.base / "tmp").mkdir()
        shutil.chown(self.base / "tmp", "mysql", "mysql")
        self.port = free_port()
        _run([install, "--no-defaults", "--user=mysql", f"--datadir={self.base / 'data'}",
              "--auth-root-authentication-method=normal", "--skip-test-db"], "mariadb-install-db")
        self._launch()
        self._sql("CREATE DATABASE tunefleet; CREATE USER 'tf'@'127.0.0.1' IDENTIFIED BY 'tf'; "
                  "GRANT ALL ON *.* TO 'tf'@'127.0.0.1';")
        return self

    def _launch(self) -> None:
        """Start mariadbd on the data made by ``start`` (again after ``restart``) and wait
        until it answers."""
        server = _need("mariadbd", "mariadb-server")
        self.proc = subprocess.Popen(
            [server, "--no-defaults", "--user=mysql", f"--datadir={self.base / 'data'}",
             f"--socket={self.sock}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--pid-file={self.base / 'pid'}", f"--tmpdir={self.base / 'tmp'}",
             "--max-connections=300",
             "--innodb-flush-log-at-trx-commit=2"],
            stdout=subprocess.DEVNULL, stderr=open(self.base / "server.log", "a"))

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"mariadbd exited ({self.proc.returncode})")
            return self._sql("SELECT 1", check=False)

        try:
            wait_until(answers, 60, "mariadbd to answer", interval=0.3)
        except AssertionError as exc:
            raise ServiceError(f"mariadbd did not start ({exc}): "
                               + (self.base / "server.log").read_text()[-800:]) from None

    def restart(self, kill: bool = False, down: float = 0.0) -> None:
        """Stop the server (a clean shutdown, or SIGKILL with KILL), keep it down DOWN seconds,
        and start it again on the same data and port."""
        import time

        self.halt(kill)
        if down:
            time.sleep(down)  # the outage itself, not a synchronisation
        self._launch()

    def halt(self, kill: bool = False) -> None:
        """Stop the server and keep its data (``resume`` starts it again)."""
        assert self.proc is not None
        if kill:
            self.proc.kill()
        else:
            _run(["mariadb-admin", "--no-defaults", "-uroot", f"--socket={self.sock}",
                  "shutdown"], "mariadb-admin shutdown")
        self.proc.wait(timeout=60)

    def resume(self) -> None:
        """Start the halted server again and wait until it answers."""
        self._launch()

    @property
    def sock(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def url(self) -> str:
        return f"mysql+pymysql://tf:tf@127.0.0.1:{self.port}/tunefleet"

    def new_database(self, name: str) -> str:
        self._sql(f"CREATE DATABASE {name}")
        return f"mysql+pymysql://tf:tf@127.0.0.1:{self.port}/{name}"

    def _sql(self, sql: str, check: bool = True) -> bool:
        proc = subprocess.run(["mariadb", "--no-defaults", "-uroot", f"--socket={self.sock}",
                               "-e", sql], capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise ServiceError(f"mariadb: {proc.stderr.strip()}")
        return proc.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["mariadb-admin", "--no-defaults", "-uroot", f"--socket={self.sock}",
                            "shutdown"], capture_output=True, timeout=60)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Slurm:
    """A one-node Slurm cluster (slurmctld + slurmd + its own munged) with a private slurm.conf;
    clients find it through ``env`` (SLURM_CONF)."""

    base: Path = field(init=False)
    pids: dict[str, Path] = field(init=False, default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.base / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> "Slurm":
        """Only the files: enough for Slurm's own parsers (``sbatch``) without daemons."""
        self.base = _private_dir("tunefleet-slurm-", None)
        munge_dir = self.base / "munge"
        munge_dir.mkdir()
        shutil.chown(munge_dir, "munge", "munge")
        munge_dir.chmod(0o755)
        for sub in ("state", "spool", "log"):
            (self.base / sub).mkdir()
        host = socket.gethostname()
        cpus = os.cpu_count() or 1
        self.conf.write_text("\n".join([
            "ClusterName=tunefleet-test",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_dir / 'munge.sock'}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.base / 'state'}",
            f"SlurmdSpoolDir={self.base / 'spool'}",
            f"SlurmctldPidFile={self.base / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.base / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.base / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.base / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"NodeName={host} CPUs={cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP "
            "OverSubscribe=FORCE:8",
            "",
        ]))
        return self

    def start(self) -> "Slurm":
        munged = _need("munged", "munge")
        slurmctld = _need("slurmctld", "slurmctld (slurm-wlm)")
        slurmd = _need("slurmd", "slurmd (slurm-wlm)")
        self.write_config()
        m = self.base / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        _run(["runuser", "-u", "munge", "--", munged, f"--socket={m / 'munge.sock'}",
              f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
              f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"], "munged")
        self.pids["munged"] = m / "munged.pid"
        env = {**os.environ, **self.env}
        _run([slurmctld, "-f", str(self.conf)], "slurmctld", env=env)
        self.pids["slurmctld"] = self.base / "slurmctld.pid"
        _run([slurmd, "-f", str(self.conf)], "slurmd", env=env)
        self.pids["slurmd"] = self.base / "slurmd.pid"
        sinfo: list[subprocess.CompletedProcess] = []

        def node_ready() -> bool:
            sinfo[:] = [subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                       text=True, env=env, timeout=30)]
            state = sinfo[0].stdout.strip()
            return sinfo[0].returncode == 0 and state.startswith(("idle", "mixed", "allocated"))

        try:
            wait_until(node_ready, 60, "the Slurm node to be idle", interval=0.5)
        except AssertionError:
            raise ServiceError(f"Slurm node not idle after 60 s (sinfo: "
                               f"{sinfo[0].stdout.strip()!r} {sinfo[0].stderr.strip()}); "
                               f"logs in {self.base / 'log'}") from None
        return self

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            path = self.pids.get(name)
            if path is None or not path.exists():
                continue
            try:
                pid = int(path.read_text().strip())
                os.kill(pid, 15)
            except (ValueError, ProcessLookupError):
                continue
            with contextlib.suppress(AssertionError):  # teardown: a slow daemon is left be
                wait_until(lambda: not _running(pid), 10, f"{name} to exit")
        shutil.rmtree(self.base, ignore_errors=True)
