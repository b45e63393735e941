"""Throwaway redis-server, PostgreSQL and nginx for the multi-process tests.

Each runs on 127.0.0.1 on a free port, with its data in a temp dir, and is
stopped afterwards.  As root, missing Debian packages are installed first
(``apt-get install redis-server postgresql nginx``).  Without them (and no root to
install them) the test is skipped with the reason, except under CI=true,
where it fails.
"""
import glob
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from live_server import free_port, stop_process

PACKAGES = {"redis-server": "redis-server", "postgresql": "postgresql", "nginx": "nginx"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason):
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the multi-process test must run)", pytrace=False)
    pytest.skip(f"{reason}; run the tests as root to have them installed (apt-get install redis-server postgresql nginx)")


def pg_bin():
    """The newest PostgreSQL server's bin dir (Debian keeps it off PATH)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(dirs[-1]) if dirs else None


def nginx_bin():
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def ensure_installed():
    """Install redis-server and postgresql with apt when missing and we are root."""
    wanted = []
    if shutil.which("redis-server") is None:
        wanted.append(PACKAGES["redis-server"])
    if pg_bin() is None:
        wanted.append(PACKAGES["postgresql"])
    if nginx_bin() is None:
        wanted.append(PACKAGES["nginx"])
    if not wanted:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        missing(f"{' and '.join(wanted)} not installed")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *wanted]):
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            missing(f"{' '.join(command)} failed: {run.stderr[-2000:]}")
    if shutil.which("redis-server") is None or pg_bin() is None or nginx_bin() is None:
        missing(f"{' and '.join(wanted)} still missing after apt-get install")


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start in {timeout}s")


class Redis:
    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        log = open(os.path.join(self.workdir, "redis.log"), "ab")
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", self.workdir],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        import redis
        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def ping():
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: " + open(os.path.join(self.workdir, "redis.log")).read())
            try:
                return client.ping()
            except redis.RedisError:
                return False
        wait_for(ping, 30, "redis-server")
        client.close()
        return self

    def stop(self):
        stop_process(self.process, 10)


class Nginx:
    """nginx with docs/deployment.md's configuration (its ```nginx block), the
    upstream servers and the listen port replaced, everything in a temp dir."""

    def __init__(self, workdir, config: str, upstreams):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for old, new in zip(("127.0.0.1:5001", "127.0.0.1:5002"), upstreams):
            assert old in config, old
            config = config.replace(old, new)
        config = config.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        self.conf = os.path.join(workdir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/nginx-error.log;\n"
                    f"events {{}}\nhttp {{ access_log {workdir}/nginx-access.log;\n"
                    f"client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy;\n{config}\n}}\n")
        self.process = None

    def start(self):
        check = subprocess.run([nginx_bin(), "-t", "-c", self.conf], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError("nginx -t: " + check.stderr)
        self.process = subprocess.Popen([nginx_bin(), "-c", self.conf], stderr=subprocess.DEVNULL)
        import urllib.request

        def up():
            if self.process.poll() is not None:
                raise RuntimeError("nginx exited")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        wait_for(up, 30, "nginx")
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class Postgres:
    """A cluster made with initdb in a temp dir owned by ``postgres``
    (the server refuses to run as root), trust auth on 127.0.0.1 only."""

    def __init__(self, workdir):
        self.bin = pg_bin()
        self.root = tempfile.mkdtemp(prefix="chatbot-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/chatbot"
        self.log = os.path.join(self.root, "server.log")

    def _as_postgres(self, *command, timeout=120):
        if os.geteuid() == 0:
            command = ("runuser", "-u", "postgres", "--", *command)
        # cwd: the postgres user may not be allowed into the checkout's folder
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
        return run

    def start(self):
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        self._as_postgres(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres", "-A", "trust",
                          "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        # socket in the temp dir: /var/run/postgresql may not exist
        self._as_postgres(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-t", "60",
                          "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start")
        self._as_postgres(os.path.join(self.bin, "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", "chatbot")
        return self

    def create_database(self, name):
        """Another empty database in the cluster, for a test that needs its own; its URL."""
        self._as_postgres(os.path.join(self.bin, "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", name)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self):
        try:
            self._as_postgres(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop",
                              timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
