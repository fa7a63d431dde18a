"""Start throwaway PostgreSQL and Redis servers for the test suite.

Each server listens on 127.0.0.1 only, on a free port, with its data in a
temporary directory.  Every server started here is registered so that
shutdown_all() (also run via atexit) stops it, even on a failing run.

PostgreSQL's data lives in its own tempfile.mkdtemp(prefix="logflow-pg-")
directory directly under /tmp, not in the directory the caller passes: pytest's
tmp dirs are mode 700 and owned by root, and when we run as root the server has
to run as an unprivileged user that could not traverse them.  shutdown_all()
copies the server log into the caller's directory as postgres.log (for
debugging) and then removes the temporary directory.
"""
import atexit
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2
import redis
from psycopg2 import sql

_servers = []  # everything started here, stopped by shutdown_all()


class ServiceUnavailable(Exception):
    """A server binary is missing; message says what to install."""


def find_binary(name, extra_dirs=()):
    """Return the path of executable `name` from PATH or extra_dirs, else None."""
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _free_port():
    """Let the kernel pick a free loopback port (tiny race until the server binds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(check, deadline_s, what, log, proc=None):
    """Poll check() until it returns truthy; fail at the deadline or if proc exits."""
    deadline = time.monotonic() + deadline_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log tail:\n{_log_tail(log)}")
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {deadline_s}s; log tail:\n{_log_tail(log)}")
        time.sleep(0.05)  # short poll interval, not a synchronisation sleep


class RedisServer:
    """A redis-server child process on 127.0.0.1:port with data in `directory`."""

    def __init__(self, binary, directory, appendonly, config_file=None, extra_args=()):
        self.directory = os.path.abspath(directory)
        self.appendonly = appendonly
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = os.path.join(self.directory, "redis.log")
        # A config file, when there is one, comes first (sentinels rewrite theirs).
        self._cmd = [binary, *([config_file] if config_file else []), "--bind", "127.0.0.1",
                     "--port", str(self.port), "--dir", self.directory, "--save", "", "--daemonize", "no",
                     "--logfile", "", "--appendonly", "yes" if appendonly else "no", *extra_args]
        if appendonly:
            self._cmd += ["--appendfsync", "always"]  # a killed server loses nothing
        self._cmd += list(extra_args)
        self._proc = None

    def start(self):
        """(Re)start on the same port and data dir; poll until this process answers."""
        if self._proc and self._proc.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self._cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
            # Compare pids so we never mistake another server on this port for ours.
            _wait_for(lambda: client.info("server")["process_id"] == self._proc.pid, 30,
                      "redis-server", self.log_path, proc=self._proc)

    def stop(self):
        """Graceful SHUTDOWN (SAVE if appendonly, else NOSAVE); wait for exit."""
        if not self._proc or self._proc.poll() is not None:
            return
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10) as client:
                client.shutdown(save=self.appendonly, nosave=not self.appendonly)
            self._proc.wait(timeout=30)
        except Exception:
            self.kill()  # never leave a server behind

    def kill(self):
        """SIGKILL the server and wait for it to exit."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    _shutdown = stop


def start_redis(directory, appendonly=False, config_file=None, extra_args=()):
    """Start a redis-server storing its data and redis.log in `directory`."""
    binary = find_binary("redis-server", ["/usr/bin", "/usr/sbin"])
    if not binary:
        raise ServiceUnavailable("redis-server not found: apt-get install redis-server")
    os.makedirs(directory, exist_ok=True)
    server = RedisServer(binary, directory, appendonly, config_file, extra_args)
    _servers.append(server)
    server.start()
    return server


SENTINEL_SERVICE = "mymaster"


class SentinelGroup:
    """A primary, its replica and three sentinels watching them, on 127.0.0.1; each server stops with shutdown_all()."""

    def __init__(self, primary, replicas, sentinels):
        self.primary, self.replicas, self.sentinels = primary, replicas, sentinels
        hosts = ",".join("127.0.0.1:%d" % sentinel.port for sentinel in sentinels)
        self.url = f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    def primary_port(self):
        """The port the sentinels name as the primary's (asking each until one answers)."""
        for sentinel in self.sentinels:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                    return int(client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)[1])
            except redis.RedisError:
                continue
        return None

    def stop(self):
        """Kill the sentinels first (so that they start no failover), then the data nodes: nothing here is kept."""
        # SIGKILL: a graceful SHUTDOWN took 3-5 s per server here, half a minute for a group.
        for server in [*self.sentinels, *self.replicas, self.primary]:
            server.kill()

    def ready(self):
        """True once the replicas are in sync and every sentinel sees them and the two other sentinels."""
        for replica in self.replicas:
            with redis.Redis(port=replica.port, socket_timeout=1) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                state = client.sentinel_master(SENTINEL_SERVICE)
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < len(self.replicas):
                    return False
        return True


def start_sentinel_group(directory, replicas=1, down_after_ms=1000, failover_timeout_ms=5000):
    """Start a primary, its replicas and three sentinels (quorum 2) in `directory`; returns once they see each other."""
    primary = start_redis(os.path.join(directory, "primary"))
    replicas = [start_redis(os.path.join(directory, "replica-%d" % number),
                            extra_args=["--replicaof", "127.0.0.1", str(primary.port)]) for number in range(replicas)]
    sentinels = []
    for number in range(3):
        folder = os.path.join(directory, "sentinel-%d" % number)
        os.makedirs(folder, exist_ok=True)
        config_file = os.path.join(folder, "sentinel.conf")
        with open(config_file, "w") as config:
            config.write(f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary.port} 2\n"
                         f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {down_after_ms}\n"
                         f"sentinel failover-timeout {SENTINEL_SERVICE} {failover_timeout_ms}\n")
        sentinels.append(start_redis(folder, config_file=config_file, extra_args=["--sentinel"]))
    group = SentinelGroup(primary, replicas, sentinels)
    # Sentinels find each other through the primary's hello messages, every 2 s.
    _wait_for(group.ready, 30, "the sentinels to see the replica and each other", sentinels[0].log_path)
    return group


class RedisClusterServers:
    """Redis Cluster primaries on 127.0.0.1 (each a RedisServer, stopped by shutdown_all); url is REDIS_URL's cluster form."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.url = "redis+cluster://%s/" % ",".join("127.0.0.1:%d" % node.port for node in nodes)

    def stop(self):
        for node in self.nodes:
            node.stop()


def start_redis_cluster(directory, primaries=3):
    """Start `primaries` cluster-enabled redis-servers in subfolders of `directory` and join them (no replicas)."""
    cli = find_binary("redis-cli", ["/usr/bin"])
    if not cli:
        raise ServiceUnavailable("redis-cli not found: apt-get install redis-server (or redis-tools)")
    # The bus port is free too (by default the port + 10000, out of range for a port above 55535).
    nodes = [start_redis(os.path.join(directory, "node%d" % number), extra_args=[
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
        "--cluster-port", str(_free_port())]) for number in range(primaries)]
    addresses = ["127.0.0.1:%d" % node.port for node in nodes]
    created = subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        raise RuntimeError("redis-cli --cluster create failed:\n%s%s" % (created.stdout, created.stderr))

    def agreed():
        # Every node sees every slot served: clients may start.
        for node in nodes:
            with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
        return True
    _wait_for(agreed, 30, "the Redis Cluster", nodes[0].log_path)
    return RedisClusterServers(nodes)


def _pg_bindir():
    """Directory holding initdb, pg_ctl and postgres (PATH first, then newest Debian dir)."""
    initdb = find_binary("initdb")
    if initdb:
        # Debian symlinks into /usr/lib/postgresql/N/bin; use that dir so versions match.
        bindir = os.path.dirname(os.path.realpath(initdb))
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("pg_ctl", "postgres")):
            return bindir
    dirs = glob.glob("/usr/lib/postgresql/*/bin")  # newest major version first
    dirs.sort(key=lambda d: [int(p) if p.isdigit() else 0 for p in d.split("/")[-2].split(".")])
    for bindir in reversed(dirs):
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise ServiceUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: "
                             "apt-get install postgresql")


def _server_user():
    """OS user to run PostgreSQL as; initdb and postgres refuse to run as root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", "logflow-test"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "logflow-test"], check=True)
    return "logflow-test"


class PostgresServer:
    """A PostgreSQL cluster in a private /tmp/logflow-pg-* dir, on 127.0.0.1:port."""

    def __init__(self, bindir, directory, options=""):
        self.bindir = bindir
        # More -c settings for the server's command line (log_statement=all, say).
        self.options = options
        self.directory = os.path.abspath(directory)
        self.user = _server_user()
        self.port = _free_port()
        self.base = tempfile.mkdtemp(prefix="logflow-pg-", dir="/tmp")
        self.datadir = os.path.join(self.base, "data")
        self.sockdir = os.path.join(self.base, "sock")
        self.log_path = os.path.join(self.base, "postgres.log")
        os.mkdir(self.sockdir)
        os.chmod(self.base, 0o755)  # the server user must be able to enter it
        if os.geteuid() == 0:
            owner = pwd.getpwnam(self.user)
            for path in (self.base, self.sockdir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/logflow_test"

    def _run(self, *cmd):
        """Run a PostgreSQL tool, as the unprivileged server user when we are root."""
        cmd = [os.path.join(self.bindir, cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.user, "--", *cmd]
            else:
                cmd = ["su", self.user, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        # cwd=base: root's cwd may not be readable by the server user.
        res = subprocess.run(cmd, cwd=self.base, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, env={**os.environ, "LC_ALL": "C"})
        if res.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}):\n"
                               f"{res.stdout}{res.stderr}\nlog tail:\n{_log_tail(self.log_path)}")
        return res

    def _connect(self, dbname="postgres"):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                dbname=dbname, connect_timeout=5)

    def initdb(self):
        """Create the cluster (trust auth, UTF8, C locale, superuser = server OS user)."""
        self._run("initdb", "-D", self.datadir, "-A", "trust", "-U", self.user,
                  "--encoding=UTF8", "--locale=C")

    def start(self):
        """pg_ctl start on the same port/datadir; wait until psycopg2 can connect."""
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.sockdir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200 -c shared_buffers=128MB " + self.options)
        self._run("pg_ctl", "-D", self.datadir, "-l", self.log_path, "-o", opts,
                  "-w", "-t", "60", "start")
        _wait_for(lambda: self._connect().close() or True, 60, "postgres", self.log_path)

    def _is_running(self):
        return os.path.exists(os.path.join(self.datadir, "postmaster.pid"))

    def stop(self, mode="fast"):
        """pg_ctl stop -m fast and wait for the server to exit."""
        if self._is_running():
            self._run("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop")

    def create_database(self, name):
        """CREATE DATABASE `name` unless it exists; return its URL."""
        conn = self._connect()
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def _shutdown(self):
        try:
            self.stop()
        except Exception:
            self.stop(mode="immediate")
        finally:
            try:  # keep the log next to the caller's other files, then drop the cluster
                shutil.copy(self.log_path, os.path.join(self.directory, "postgres.log"))
            except OSError:
                pass
            if not self._is_running():  # never delete a live cluster's files
                shutil.rmtree(self.base, ignore_errors=True)


def start_postgres(directory, options=""):
    """Create and start a PostgreSQL cluster with database logflow_test (options: more -c settings)."""
    bindir = _pg_bindir()
    os.makedirs(directory, exist_ok=True)
    server = PostgresServer(bindir, directory, options)
    _servers.append(server)
    server.initdb()
    server.start()
    server.create_database("logflow_test")
    return server


class PostgresReplica(PostgresServer):
    """A streaming replica of a running PostgresServer: a pg_basebackup -R copy of it, started on its own port.

    initdb's pg_hba.conf already trusts replication connections from
    127.0.0.1, and the defaults (wal_level=replica, max_wal_senders=10) let a
    primary stream to it.
    """

    def __init__(self, primary, directory):
        super().__init__(primary.bindir, directory, primary.options)
        self.primary = primary

    def initdb(self):
        """Copy the primary, as the server user, writing standby.signal and primary_conninfo (-R)."""
        self._run("pg_basebackup", "-D", self.datadir, "-R", "-X", "stream", "-c", "fast",
                  "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", self.primary.user)

    def replica_url(self, primary_url):
        """The URL of one of the primary's databases, on this replica."""
        return primary_url.replace(":%d/" % self.primary.port, ":%d/" % self.port)

    def caught_up(self):
        """True once this replica has replayed all the WAL its primary has written so far."""
        with self.primary._connect() as primary, primary.cursor() as cursor:
            # The insert position, not pg_current_wal_lsn(): with synchronous_commit=off (start())
            # a commit's WAL is written up to 200 ms after it returns.
            cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
            (written,), = cursor.fetchall()
        primary.close()
        with self._connect() as replica, replica.cursor() as cursor:
            cursor.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s) >= 0", (written,))
            (done,), = cursor.fetchall()
        replica.close()
        return done


def start_replica(primary, directory):
    """Start a streaming replica of a running PostgresServer (database logflow_test and the rest come with it)."""
    os.makedirs(directory, exist_ok=True)
    server = PostgresReplica(primary, directory)
    _servers.append(server)
    server.initdb()
    server.start()
    return server


def shutdown_all():
    """Stop every server started by this module (also registered with atexit)."""
    while _servers:
        server = _servers.pop()
        try:
            server._shutdown()
        except Exception as exc:  # keep going: stop the others too
            print(f"services.shutdown_all: {server.url}: {exc}")


atexit.register(shutdown_all)
