#!/usr/bin/env python3
"""The lottery under Docker Compose, against the real Docker engine.

    python3 tests/docker/test_compose.py [-v] [unittest arguments]

Needs the images `loteria-server:latest`, `loteria-client:latest` and the netcat image
of nc_test.sh (`make test-docker` builds them first). Each test writes its own compose
file with compose_maker.py into a temporary directory (with its own copy of config/),
runs it as the Compose project `loteria-test`, and removes every container, network
and volume it made, also when it fails; the last test checks nothing is left.
The containers keep their fixed names (`server`, `client1` …), so a lottery already
running on this machine has to be stopped first (`make docker-compose-down`).

Each lottery publishes its status page on a free port of 127.0.0.1 (never 8080, which
the machine may use). nc_test.sh runs under sh, dash and bash (.ci/run installs dash).
The course dataset is read from tests/data/tp0 (or $LOTERIA_DATASET).
Python 3.10 or later, standard library only.
"""

import collections
import csv
import io
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATASET = Path(os.environ.get("LOTERIA_DATASET", ROOT / "tests/data/tp0"))
PROJECT = "loteria-test"
# On containers a test starts outside Compose (so the last test can find leftovers).
TEST_LABEL = "loteria.test=true"
WINNING_NUMBER = 7574
# Generous bounds: they only stop a broken run from hanging; nothing is timed here.
WAIT = 180


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


COMPOSE = compose_command()


def run(args, *, check=True, timeout=WAIT, env=None, stdin=None,
        stdin_text: str | None = None) -> subprocess.CompletedProcess:
    """Runs a command, capturing text output; fails the test with its output."""
    result = subprocess.run(args, capture_output=True, timeout=timeout,
                            env=None if env is None else {**os.environ, **env},
                            stdin=stdin if stdin_text is None else None,
                            input=None if stdin_text is None else stdin_text.encode())
    result.stdout = result.stdout.decode("utf-8", "replace")
    result.stderr = result.stderr.decode("utf-8", "replace")
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


# ----- log lines (SPEC "Log lines") -----

def is_log(line: str, action: str, result: str) -> bool:
    return f"action: {action} | result: {result}" in line


def field(line: str, key: str) -> str | None:
    for part in line.split(" | "):
        name, sep, value = part.partition(": ")
        if sep and name.strip() == key:
            return value.strip()
    return None


def parse_status_table(text: str) -> tuple[str, str, dict[int, tuple], tuple]:
    """`make status`'s table (src/client/status.rs `render`), printed once, in one
    piece, among the client's log lines: the header line, the `missing:` line,
    {agency: (connected, finished, bets, winners)} (a row `3-5` stands for each of its
    agencies) and the total row's (bets, winners)."""
    all_lines = text.splitlines()
    starts = [i for i, l in enumerate(all_lines) if l.startswith("lottery status: ")]
    assert len(starts) == 1, text
    lines = all_lines[starts[0]:]
    assert len(lines) >= 4, text
    rows = {}
    total = None
    assert re.fullmatch(r"agency\s+connected\s+finished\s+bets\s+winners", lines[2]), text
    for line in lines[3:]:
        if m := re.fullmatch(r"total\s+(\d+)\s+(\S+)", line):
            total = (int(m[1]), m[2])
            break
        m = re.fullmatch(r"(\d+)(?:-(\d+))?\s+(yes|no)\s+(yes|no)\s+(\d+)\s+(\S+)", line)
        assert m, f"not a table row: {line!r}\n{text}"
        for agency in range(int(m[1]), int(m[2] or m[1]) + 1):
            rows[agency] = (m[3], m[4], int(m[5]), m[6])
    assert total is not None, text
    return lines[0], lines[1], rows, total


# ----- data -----

Row = tuple[int, str, str, str, str, int]


def agency_rows(path: Path, agency: int) -> list[Row]:
    """The bets of one agency file, as the server stores them (agency first)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [(agency, first, last, doc, born, int(number))
                for first, last, doc, born, number in csv.reader(f)]


def stored_rows(text: str) -> list[Row]:
    """The server's bets file: agency,first_name,last_name,document,birthdate,number."""
    return [(int(a), first, last, doc, born, int(number))
            for a, first, last, doc, born, number in csv.reader(io.StringIO(text))]


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now (for the status page)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, str, str]:
    """GET http://127.0.0.1:port/path: status code, Content-Type and body."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return (reply.status, reply.headers.get("Content-Type", ""),
                reply.read().decode("utf-8", "replace"))


def generate(directory: Path, agencies: int, bets: int) -> Path:
    run([sys.executable, ROOT / "scripts/gen_agencies.py", "--agencies", str(agencies),
         "--bets", str(bets), "-o", directory])
    return directory


class Lottery:
    """One compose project: a generated compose file in a temporary directory, with
    its own copy of config/ (so a test may edit it) and an optional override file; or
    a given compose file as it is (`compose_file`, e.g. the committed one)."""

    def __init__(self, test: unittest.TestCase, n: int, data_dir: Path,
                 override: str | None = None, compose_file: Path | None = None):
        self.test = test
        self.n = n
        self.dir = Path(tempfile.mkdtemp(prefix="loteria-docker-"))
        test.addCleanup(self.remove)
        self.config = self.dir / "config"
        shutil.copytree(ROOT / "config", self.config)
        if compose_file is None:
            compose_file = self.dir / "docker-compose.yaml"
            run([sys.executable, ROOT / "compose_maker.py", str(n), "-o", compose_file,
                 "--data-dir", data_dir, "--config-dir", self.config])
        self.files = ["-f", str(compose_file)]
        # The status page on the host's loopback, on a port of its own (not 8080: the
        # machine may use it).
        self.status_port = free_port()
        if override:
            (self.dir / "override.yaml").write_text(override, encoding="utf-8")
            self.files += ["-f", str(self.dir / "override.yaml")]

    def compose(self, *args: str, check=True) -> subprocess.CompletedProcess:
        return run([*COMPOSE, "-p", PROJECT, *self.files, *args], check=check,
                   env={"LOTERIA_STATUS_PORT": str(self.status_port)})

    def status_table(self, check=True) -> subprocess.CompletedProcess:
        """What `make status` runs, on this project: the client in status mode, once."""
        return self.compose("run", "--rm", "--no-deps", "-T", "-e", "CLI_MODE=status",
                            "-e", "CLI_LOOP_AMOUNT=0", "-e", "CLI_RETRY_DEADLINE=10s",
                            "client1", check=check)

    def up(self, *services: str) -> None:
        self.compose("up", "--detach", "--no-build", *services)

    def stop(self, service: str) -> None:
        """`docker compose stop` (SIGTERM), and a line on stderr telling how long the
        command took and how long the program took from the signal to its exit."""
        started = time.monotonic()
        self.compose("stop", service)
        took = time.monotonic() - started
        print(f"\n    docker compose stop {service}: {took:.2f} s; in the program, signal "
              f"to end: {self.signal_to_exit_ms(service):.1f} ms", file=sys.stderr)

    def signal_to_exit_ms(self, container: str) -> float:
        """From the `signal` log line to the `end` line, by Docker's timestamps."""
        stamps = {}
        for line in run(["docker", "logs", "--timestamps", container]).stdout.splitlines():
            stamp, _, text = line.partition(" ")
            for action in ("signal", "end"):
                if f"action: {action} | " in text:
                    # 2026-11-27T02:54:46.735172801Z: keep microseconds for fromisoformat.
                    stamps[action] = datetime.fromisoformat(stamp[:26])
        self.test.assertEqual(set(stamps), {"signal", "end"}, f"{container} logs")
        return (stamps["end"] - stamps["signal"]).total_seconds() * 1000

    def wait(self, container: str) -> int:
        """Waits for the container to exit; returns its exit code."""
        return int(run(["docker", "wait", container]).stdout.strip())

    def exit_code(self, container: str) -> int:
        return int(run(["docker", "inspect", "-f", "{{.State.ExitCode}}", container]).stdout)

    def logs(self, container: str) -> list[str]:
        result = run(["docker", "logs", container])
        return (result.stdout + result.stderr).splitlines()

    def wait_for_log(self, container: str, action: str, result: str, nth: int = 1) -> str:
        """Waits until the container's logs hold `nth` lines of action/result (each
        start of a container appends to the same log); returns the nth."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            lines = [l for l in self.logs(container) if is_log(l, action, result)]
            if len(lines) >= nth:
                return lines[nth - 1]
            time.sleep(0.1)
        self.test.fail(f"{container} never logged {action}/{result} {nth} time(s):\n"
                       + "\n".join(self.logs(container)))

    def wait_for_line(self, container: str, what: str, matches) -> str:
        """Waits until one of the container's log lines satisfies `matches`; returns
        the first that does. `what` names it in the failure message."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            lines = [l for l in self.logs(container) if matches(l)]
            if lines:
                return lines[0]
            time.sleep(0.1)
        self.test.fail(f"{container} never logged {what}:\n" + "\n".join(self.logs(container)))

    def received(self, container: str = "server") -> list[str]:
        """The `msg` of each `receive_message | result: success` line so far."""
        return [field(l, "msg") for l in self.logs(container)
                if is_log(l, "receive_message", "success")]

    def received_since(self, seen: int, count: int, container: str = "server") -> list[str]:
        """The `msg`s after the first `seen` ones, once there are at least `count` (a
        line logged just before the answer went out may reach `docker logs` a moment
        after it), or after a few seconds whatever there is."""
        deadline = time.monotonic() + 10
        while len(messages := self.received(container)) < seen + count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return messages[seen:]

    def networks(self, container: str) -> list[str]:
        return sorted(run(["docker", "inspect", "-f",
                           "{{range $name, $_ := .NetworkSettings.Networks}}"
                           "{{println $name}}{{end}}", container]).stdout.split())

    def network(self) -> str:
        """The lottery's own (internal) network."""
        return f"{PROJECT}_lottery"

    def stored(self) -> list[Row]:
        """The bets file on the server's volume (read with `docker cp`, which also works
        on a stopped container)."""
        archive = subprocess.run(["docker", "cp", "server:/app/data/bets.csv", "-"],
                                 capture_output=True, timeout=WAIT, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.extractfile("bets.csv")
            assert member is not None, "bets.csv is not a regular file"
            return stored_rows(member.read().decode("utf-8"))

    def assert_no_fail(self, *containers: str) -> None:
        for container in containers:
            failures = [line for line in self.logs(container) if "result: fail" in line]
            self.test.assertEqual(failures, [], f"{container} logged failures")

    def remove(self) -> None:
        try:
            self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5",
                         check=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def edit(path: Path, *replacements: tuple[str, str]) -> None:
    """Rewrites a file in place, each `old` text (which must be there once) by `new`."""
    text = path.read_text(encoding="utf-8")
    for old, new in replacements:
        assert text.count(old) == 1, f"{path.name}: {old!r} is not there exactly once"
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def nc_test(shell: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """nc_test.sh run as itself (its #!/bin/sh) or by the given shell."""
    command = [ROOT / "nc_test.sh"] if shell is None else [shell, ROOT / "nc_test.sh"]
    return run(command, check=False, env=env)


# The shells nc_test.sh must give the same verdict under (.ci/run installs dash).
SHELLS = ["sh", "dash", "bash"]

# Compose's own line when a container ends ("client1 exited with code 0"), which the
# assignment's tooling looks for in `docker compose logs`.
COMPOSE_EXIT_LINE = re.compile(r"exited with code \d+")


def exit_like(lines: list[str]) -> list[str]:
    """Log lines that could be taken for Compose's container-exit line: an `exit`
    action, or `exited with code N` anywhere."""
    return [line for line in lines
            if re.search(r"action: [^|]*exit", line) or COMPOSE_EXIT_LINE.search(line)]


class DockerTestCase(unittest.TestCase):
    def setUp(self) -> None:
        names = ["server"] + [f"client{k}" for k in range(1, 51)]
        found = run(["docker", "ps", "-a", "--format",
                     '{{.Names}} {{.Label "com.docker.compose.project"}}']).stdout.split("\n")
        for line in filter(None, found):
            name, _, project = line.partition(" ")
            if name not in names:
                continue
            # Failing, not skipping: a skipped Docker suite would pass having tested nothing.
            self.assertEqual(project, PROJECT,
                             f"a container named {name} (project {project!r}) exists: "
                             "stop that lottery first (make docker-compose-down)")
            run(["docker", "rm", "-f", name])  # left by an interrupted earlier run


class ComposeMakerTest(unittest.TestCase):
    def maker(self, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, ROOT / "compose_maker.py", *args],
                              capture_output=True, text=True, cwd=cwd, timeout=60)

    def test_committed_compose_file_is_the_output_for_five(self):
        result = self.maker("5", "-o", "-")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, (ROOT / "docker-compose.yaml").read_text())

    def test_bad_n_is_a_clear_error_with_exit_code_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "compose.yaml"
            for bad in ["-1", "-0", "abc", "1.5", "", "3x", "1e3", "٣", "1001",
                        "99999999999999999999999"]:
                with self.subTest(n=bad):
                    result = self.maker(bad, "-o", str(out))
                    self.assertEqual(result.returncode, 2, result.stderr)
                    self.assertIn("n must be", result.stderr)
                    self.assertIn(repr(bad), result.stderr)
                    self.assertFalse(out.exists())
            result = self.maker("2", "3", "-o", str(out))
            self.assertEqual(result.returncode, 2)
            self.assertIn("unrecognized arguments: 3", result.stderr)
            result = self.maker("2", "--config-dir", tmp, "-o", str(out))
            self.assertEqual(result.returncode, 2)
            self.assertIn("no server.toml", result.stderr)
            self.assertFalse(out.exists())

    def test_default_is_one_agency_and_compose_accepts_what_it_writes(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "docker-compose.yaml"
            for args, services in [((), ["server", "client1"]),
                                   (("3",), ["server", "client1", "client2", "client3"])]:
                with self.subTest(args=args):
                    result = self.maker(*args, "-o", str(out))
                    self.assertEqual(result.returncode, 0, result.stderr)
                    listed = run([*COMPOSE, "-f", out, "config", "--services"]).stdout.split()
                    self.assertEqual(sorted(listed), sorted(services))
                    text = out.read_text()
                    n = len(services) - 1
                    self.assertIn(f'"SERVER_AGENCIES={n}"', text)
                    self.assertIn(f'/agencies/agency-{n}.csv"\n'
                                  f"        target: /app/agencies/agency-{n}.csv\n"
                                  "        read_only: true\n", text)
                    self.assertEqual(text.count("target: /app/config\n"
                                                "        read_only: true\n"), n + 1)
                    self.assertIn('source: "bets-data"\n        target: /app/data\n', text)
                    self.assertIn("    internal: true", text)

    def test_zero_writes_the_server_alone(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "docker-compose.yaml"
            result = self.maker("0", "-o", str(out))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("the server alone", result.stdout)
            listed = run([*COMPOSE, "-f", out, "config", "--services"]).stdout.split()
            self.assertEqual(listed, ["server"])
            text = out.read_text()
            # No SERVER_AGENCIES: the configuration's lottery.agencies (≥ 1) applies.
            self.assertNotIn("SERVER_AGENCIES", text)
            self.assertNotIn("client", text)
            self.assertIn('"SERVER_STATUS_PORT=8080"', text)
            self.assertIn("    internal: true", text)

    def test_status_page_is_published_on_loopback_by_the_server_alone(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "docker-compose.yaml"
            self.assertEqual(self.maker("2", "-o", str(out)).returncode, 0)
            text = out.read_text()
            services = text.split("\n\n")
            server = next(s for s in services if "services:\n  server:\n" in s)
            self.assertIn('"SERVER_STATUS_PORT=8080"', server)
            self.assertIn("    networks:\n      - lottery\n      - status\n"
                          "    ports:\n"
                          '      - "127.0.0.1:${LOTERIA_STATUS_PORT:-8080}:8080"\n',
                          server + "\n")
            for k in (1, 2):
                client = next(s for s in services if s.startswith(f"  client{k}:"))
                self.assertIn("    networks:\n      - lottery\n    depends_on:", client)
                self.assertNotIn("ports:", client)
                self.assertNotIn("status", client)
            self.assertIn("networks:\n  lottery:\n    driver: bridge\n    internal: true",
                          text)
            self.assertIn("\n  status:\n    driver: bridge", text)
            # Compose resolves the port: the default, or LOTERIA_STATUS_PORT.
            for env, port in (({}, "8080"), ({"LOTERIA_STATUS_PORT": "18081"}, "18081")):
                shown = run([*COMPOSE, "-f", out, "config"], env=env).stdout
                self.assertRegex(shown, rf"127\.0\.0\.1:{port}:8080|"
                                        rf"host_ip: 127\.0\.0\.1\s+target: 8080\s+"
                                        rf"published: \"?{port}")

    def test_paths_are_taken_literally(self):
        with tempfile.TemporaryDirectory() as tmp:
            odd = Path(tmp) / "a $HOME: b"
            shutil.copytree(ROOT / "agencies", odd)
            out = Path(tmp) / "c.yaml"
            result = self.maker("1", "--data-dir", str(odd), "-o", str(out))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn('source: "./a $$HOME: b/agency-1.csv"', out.read_text())
            self.assertEqual(run([*COMPOSE, "-f", out, "config", "-q"]).returncode, 0)

    def test_missing_agency_files_are_warned_about(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = self.maker("7", "-o", str(Path(tmp) / "c.yaml"))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("agency-6.csv, agency-7.csv", result.stderr)


class DockerfileTest(unittest.TestCase):
    def stage(self, name: str, first: str) -> list[str]:
        """The lines of a Dockerfile's stage starting with `first`, up to the next FROM."""
        lines = (ROOT / name).read_text().splitlines()
        start = next(i for i, l in enumerate(lines) if l.startswith(first))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM ")),
                   len(lines))
        return lines[start:end]

    def test_both_images_share_one_builder_stage(self):
        # Line for line the same: the second build takes every builder layer from the
        # cache, so the crate compiles once for both images.
        builder = self.stage("Dockerfile.server", "FROM rust:")
        self.assertIn("FROM rust:1.95-slim-bookworm AS builder", builder)
        self.assertEqual(self.stage("Dockerfile.client", "FROM rust:"), builder)

    def test_runtime_stages_run_the_binary_unprivileged_as_pid_1(self):
        for name, binary in (("Dockerfile.server", "server"), ("Dockerfile.client", "client")):
            with self.subTest(name=name):
                runtime = self.stage(name, "FROM debian:bookworm-slim")
                self.assertIn("USER loteria", runtime)
                self.assertIn(f'ENTRYPOINT ["/usr/local/bin/{binary}"]', runtime)


class LotteryChecks(unittest.TestCase):
    """A whole lottery run and checked (mixed into the Docker test classes)."""

    def run_lottery(self, n: int, data_dir: Path, lottery: Lottery | None = None) -> Lottery:
        """Starts a lottery (of compose_maker.py, or the one given), waits for every
        agency, checks each got exactly its own winners, the draw ran once and nothing
        failed."""
        lottery = lottery or Lottery(self, n, data_dir)
        lottery.up()
        for k in range(1, n + 1):
            code = lottery.wait(f"client{k}")
            self.assertEqual(code, 0, "\n".join(lottery.logs(f"client{k}")))
            rows = agency_rows(data_dir / f"agency-{k}.csv", k)
            expected = sorted(r[3] for r in rows if r[5] == WINNING_NUMBER)
            logs = lottery.logs(f"client{k}")
            counts = [field(l, "cant_ganadores") for l in logs
                      if is_log(l, "consulta_ganadores", "success")]
            self.assertEqual(counts, [str(len(expected))], f"client{k}")
            documents = [field(l, "dnis") for l in logs if is_log(l, "ganadores", "success")]
            self.assertEqual(len(documents), 1)
            self.assertEqual(sorted(filter(None, documents[0].split(","))), expected)
        draws = [l for l in lottery.logs("server") if is_log(l, "sorteo", "success")]
        self.assertEqual(len(draws), 1)
        lottery.assert_no_fail("server", *(f"client{k}" for k in range(1, n + 1)))
        return lottery

    def assert_all_stored(self, lottery: Lottery, data_dir: Path) -> list[Row]:
        expected = collections.Counter()
        for k in range(1, lottery.n + 1):
            expected.update(agency_rows(data_dir / f"agency-{k}.csv", k))
        stored = lottery.stored()
        self.assertEqual(collections.Counter(stored), expected)
        return stored


class LotteryTest(LotteryChecks, DockerTestCase):
    def test_three_agencies_on_generated_data(self):
        lottery = self.run_lottery(3, ROOT / "agencies")
        stored = self.assert_all_stored(lottery, ROOT / "agencies")
        self.assertEqual(len(stored), 9000)

        # The server keeps serving after the draw; the echo check goes through.
        check = nc_test()
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertEqual(check.stdout, "action: test_echo_server | result: success\n")

        # `docker compose stop`: SIGTERM, exit code 0, each closing logged.
        lottery.stop("server")
        self.assertEqual(lottery.exit_code("server"), 0)
        logs = lottery.logs("server")
        for action in ["signal", "close_listener", "join_connections", "close_storage",
                       "end"]:
            self.assertTrue(any(is_log(l, action, "success") for l in logs), action)
        self.assertEqual(collections.Counter(lottery.stored()), collections.Counter(stored))

        # With the server down the echo check fails.
        check = nc_test()
        self.assertEqual(check.returncode, 1)
        self.assertEqual(check.stdout, "action: test_echo_server | result: fail\n")

    def test_five_agencies_on_the_course_dataset(self):
        self.assertTrue((DATASET / "agency-1.csv").is_file(),
                        f"no course dataset at {DATASET} (set LOTERIA_DATASET)")
        lottery = self.run_lottery(5, DATASET)
        stored = self.assert_all_stored(lottery, DATASET)
        self.assertEqual(len(stored), 78697)
        winners = [sum(1 for r in stored if r[0] == k and r[5] == WINNING_NUMBER)
                   for k in range(1, 6)]
        self.assertEqual(winners, [2, 3, 3, 2, 0])


# ----- talking to the server directly, over TLS or in the clear (TlsTest) -----

HELLO, ERROR = 0x01, 0xFF
NOT_AUTHORIZED, TLS_REQUIRED = 20, 19


def hello_frame(agency: int, upload: int = 0x0102030405060708) -> bytes:
    """A HELLO frame (docs/PROTOCOL.md): version 3, kind, length, agency u32, upload u64."""
    return bytes([3, HELLO, 0, 12]) + agency.to_bytes(4, "big") + upload.to_bytes(8, "big")


def read_frame(sock) -> tuple[int, bytes]:
    """One frame: (kind, payload)."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"the server closed after {len(data)} of {n} bytes")
            data += chunk
        return data
    header = exactly(4)
    assert header[0] == 3, header
    return header[1], exactly(int.from_bytes(header[2:4], "big"))


def error_of(kind: int, payload: bytes) -> tuple[int, str]:
    """An ERROR frame's code and reason."""
    assert kind == ERROR, f"not an ERROR frame: kind {kind:#x}"
    size = int.from_bytes(payload[2:4], "big")
    return int.from_bytes(payload[:2], "big"), payload[4:4 + size].decode("utf-8")


def ask(port: int, frame: bytes, tls: tuple[Path, Path] | None = None) -> tuple[int, bytes]:
    """Sends `frame` to 127.0.0.1:port and reads the answer: over TLS with the
    lottery CA (checking the server's certificate for `localhost`) and the given
    certificate and key, or in the clear (`tls` None)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        if tls is None:
            raw.sendall(frame)
            return read_frame(raw)
        context = ssl.create_default_context(cafile=str(ROOT / "certs/ca.pem"))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(frame)
            return read_frame(conn)


class TlsTest(LotteryChecks, DockerTestCase):
    """Mutual TLS in Docker, with the certificates of `make certs` (certs/): the
    committed compose file's lottery over TLS, each container with its own key only,
    and agency 2's certificate unable to act as agency 1."""

    def mounts(self, container: str) -> dict[str, tuple[str, bool]]:
        """The container's mounts: {destination: (source, writable)}."""
        out = run(["docker", "inspect", "-f", "{{range .Mounts}}{{.Destination}}|{{.Source}}|"
                   "{{.RW}}{{println}}{{end}}", container]).stdout
        found = {}
        for line in filter(None, out.splitlines()):
            destination, source, writable = line.split("|")
            found[destination] = (source, writable == "true")
        return found

    def assert_own_certificates_only(self, container: str, name: str) -> None:
        """In /app/certs the container has the CA's certificate, its own certificate
        and key, read-only, from certs/, and nothing else."""
        certs = {d: v for d, v in self.mounts(container).items() if d.startswith("/app/certs/")}
        self.assertEqual(certs, {f"/app/certs/{f}": (str(ROOT / "certs" / f), False)
                                 for f in ("ca.pem", f"{name}.pem", f"{name}.key")}, container)

    def test_the_committed_compose_files_lottery_runs_over_mutual_tls(self):
        lottery = Lottery(self, 5, ROOT / "agencies", compose_file=ROOT / "docker-compose.yaml")
        self.run_lottery(5, ROOT / "agencies", lottery)
        self.assertEqual(len(self.assert_all_stored(lottery, ROOT / "agencies")), 15000)
        self.assert_own_certificates_only("server", "server")
        # TLS on and required: every upload (HELLO, BETS, FIN, WINNERS_QUERY) came over
        # TLS, with the agency's own certificate, or it would have been refused.
        server = [l for l in lottery.logs("server") if is_log(l, "tls", "success")]
        self.assertEqual([(field(l, "tls"), field(l, "required"), field(l, "ca"),
                           field(l, "cert")) for l in server],
                         [("on", "true", "/app/certs/ca.pem", "/app/certs/server.pem")], server)
        for k in range(1, 6):
            self.assert_own_certificates_only(f"client{k}", f"agency-{k}")
            client = [l for l in lottery.logs(f"client{k}") if is_log(l, "tls", "success")]
            self.assertEqual([(field(l, "tls"), field(l, "cert")) for l in client],
                             [("on", f"/app/certs/agency-{k}.pem")], client)
        # Nothing refused on the way.
        self.assertFalse([l for l in lottery.logs("server")
                          if is_log(l, "tls_handshake", "fail") or is_log(l, "request", "fail")])
        # The plain-text and ECHO check stays plaintext by design, TLS required or not.
        check = nc_test()
        self.assertEqual((check.returncode, check.stdout),
                         (0, "action: test_echo_server | result: success\n"), check.stderr)

    def test_agency_2s_certificate_cannot_act_as_agency_1(self):
        # The server's port is also published on the host's loopback (an override), so
        # that an impostor that skips the client's own checks can talk to it.
        port = free_port()
        lottery = Lottery(self, 2, ROOT / "agencies", override=(
            f'services:\n  server:\n    ports:\n      - "127.0.0.1:{port}:12345"\n'))
        lottery.up("server")
        lottery.wait_for_log("server", "listen", "success")

        # client2's container (agency 2's key and certificate) told it is agency 1, with
        # agency 2's file: it stops before connecting and sends nothing.
        impostor = lottery.compose("run", "--rm", "--no-deps", "-T", "-e", "CLI_ID=1",
                                   "-e", "CLI_DATA=/app/agencies/agency-2.csv",
                                   "-e", "CLI_RETRY_DEADLINE=10s", "client2", check=False)
        output = (impostor.stdout + impostor.stderr).splitlines()
        self.assertNotEqual(impostor.returncode, 0, output)
        ends = [l for l in output if is_log(l, "end", "fail")]
        self.assertEqual(len(ends), 1, output)
        self.assertIn("is not agency 1's certificate", ends[0])
        print(f"\n    the client container: {ends[0]}", file=sys.stderr)

        # The same certificate in a TLS client that does not check itself: the handshake
        # succeeds (a certificate of the lottery CA), the HELLO for agency 1 is refused
        # with NOT_AUTHORIZED, and the server logs why.
        agency_2 = (ROOT / "certs/agency-2.pem", ROOT / "certs/agency-2.key")
        code, reason = error_of(*ask(port, hello_frame(1), tls=agency_2))
        self.assertEqual(code, NOT_AUTHORIZED, reason)
        refusal = lottery.wait_for_line(
            "server", "the refusal of agency 2's certificate as agency 1",
            lambda l: is_log(l, "request", "fail") and "NOT_AUTHORIZED" in (field(l, "code") or ""))
        self.assertIn("does not speak for agency 1", field(refusal, "reason"), refusal)
        print(f"\n    the server: {refusal}", file=sys.stderr)
        # Agency 1 in the clear: TLS_REQUIRED. Agency 2's certificate for agency 2: welcome.
        code, reason = error_of(*ask(port, hello_frame(1)))
        self.assertEqual(code, TLS_REQUIRED, reason)
        kind, _ = ask(port, hello_frame(2), tls=agency_2)
        self.assertEqual(kind, 0x81, "agency 2's certificate is not welcome as agency 2")

        # Nothing stored: no batch, 0 bets for either agency.
        self.assertFalse([l for l in lottery.logs("server")
                          if is_log(l, "apuesta_recibida", "success")], "a batch was stored")
        header, missing, rows, total = parse_status_table(lottery.status_table().stdout)
        self.assertEqual(([rows[k][1:3] for k in (1, 2)], total[0]),
                         ([("no", 0), ("no", 0)], 0))

        # The agencies themselves then run the lottery: each its own file, stored once,
        # and nothing of the impostor (agency 2's file under agency 1).
        lottery.up("client1", "client2")
        for k in (1, 2):
            self.assertEqual(lottery.wait(f"client{k}"), 0,
                             "\n".join(lottery.logs(f"client{k}")))
        self.assert_all_stored(lottery, ROOT / "agencies")


class EchoCheckTest(DockerTestCase):
    def test_fails_when_something_else_answers_or_nothing_is_there(self):
        lottery = Lottery(self, 1, ROOT / "agencies")
        lottery.up("server")
        lottery.wait_for_log("server", "listen", "success")
        check = nc_test()
        self.assertEqual((check.returncode, check.stdout),
                         (0, "action: test_echo_server | result: success\n"), check.stderr)

        # A look-alike on the same network that answers with other bytes.
        impostor = "loteria-test-impostor"
        run(["docker", "run", "--detach", "--rm", "--name", impostor,
             "--label", TEST_LABEL,
             "--network", lottery.network(), "busybox:1.35",
             "sh", "-c",
             "while true; do echo listening; echo not an echo | nc -l -p 12345; done"])
        self.addCleanup(run, ["docker", "rm", "-f", impostor], check=False)
        deadline = time.monotonic() + WAIT
        while "listening" not in run(["docker", "logs", impostor]).stdout:
            self.assertLess(time.monotonic(), deadline, "the impostor never started")
            time.sleep(0.1)
        time.sleep(0.2)  # from `echo` to nc's listen()
        check = nc_test(NC_TEST_SERVER=impostor)
        self.assertEqual(check.returncode, 1, check.stderr)
        self.assertEqual(check.stdout, "action: test_echo_server | result: fail\n")
        self.assertIn("not the message sent", check.stderr)

        # A container that is not there, and a port nobody listens on.
        check = nc_test(NC_TEST_SERVER="loteria-test-nobody")
        self.assertEqual((check.returncode, check.stdout),
                         (1, "action: test_echo_server | result: fail\n"))
        check = nc_test(NC_TEST_PORT="12346")
        self.assertEqual((check.returncode, check.stdout),
                         (1, "action: test_echo_server | result: fail\n"))


class ServerAloneTest(DockerTestCase):
    """`compose_maker.py 0`: the server alone, which the echo check and a plain
    `nc` text line both get an answer from."""

    def start(self) -> Lottery:
        lottery = Lottery(self, 0, ROOT / "agencies")
        lottery.up()
        lottery.wait_for_log("server", "listen", "success")
        return lottery

    def test_compose_maker_0_up_echo_check_down(self):
        lottery = self.start()
        self.assertEqual(lottery.networks("server"),
                         [f"{PROJECT}_lottery", f"{PROJECT}_status"])
        config = lottery.wait_for_log("server", "config", "success")
        # No SERVER_AGENCIES: it waits for config/server.toml's lottery.agencies.
        self.assertEqual(field(config, "agencies"), "5", config)
        for shell in [None, *SHELLS]:
            with self.subTest(shell=shell or "#!/bin/sh"):
                seen = len(lottery.received())
                sent_after = int(time.time())
                check = nc_test(shell)
                self.assertEqual((check.returncode, check.stdout),
                                 (0, "action: test_echo_server | result: success\n"),
                                 check.stderr)
                # The server logged the one message nc_test.sh sent: `nc_test PID
                # SECONDS NONCE`, stamped while it ran.
                new = lottery.received_since(seen, 1)
                self.assertEqual(len(new), 1, new)
                sent = re.fullmatch(r"nc_test \d+ (\d+) \d+", new[0] or "")
                self.assertTrue(sent, new)
                self.assertTrue(sent_after <= int(sent[1]) <= time.time(), new)
        lottery.compose("down", "--volumes", "--timeout", "5")
        for shell in [None, *SHELLS]:
            with self.subTest(shell=shell or "#!/bin/sh", server="down"):
                check = nc_test(shell)
                self.assertEqual((check.returncode, check.stdout),
                                 (1, "action: test_echo_server | result: fail\n"))
                self.assertIn("no running container named 'server'", check.stderr)

    def test_plain_nc_text_is_echoed_line_by_line(self):
        lottery = self.start()
        for sent in ["hola\n", "hola\nchau, ñandú\n"]:
            with self.subTest(sent=sent):
                seen = len(lottery.received())
                result = run(["docker", "run", "--rm", "-i", "--label", TEST_LABEL,
                              "--network", lottery.network(), "busybox:1.35",
                              "timeout", "10", "nc", "server", "12345"],
                             stdin_text=sent)
                self.assertEqual(result.stdout, sent, result.stderr)
                # One `receive_message` line per line sent, with its text.
                self.assertEqual(lottery.received_since(seen, len(sent.splitlines())),
                                 sent.splitlines())
        # `echo hola | nc server 12345`, word for word, inside the container.
        seen = len(lottery.received())
        result = run(["docker", "run", "--rm", "--label", TEST_LABEL,
                      "--network", lottery.network(), "busybox:1.35",
                      "sh", "-c", "echo hola | timeout 10 nc server 12345"])
        self.assertEqual(result.stdout, "hola\n", result.stderr)
        self.assertEqual(lottery.received_since(seen, 1), ["hola"])
        line = [l for l in lottery.logs("server") if is_log(l, "receive_message", "success")][-1]
        self.assertRegex(line, r"\| peer: [0-9.]+:\d+ \| msg: hola$")
        lottery.assert_no_fail("server")


class LogLinesTest(DockerTestCase):
    def test_no_log_line_looks_like_composes_exit_line(self):
        """Compose prints `client1 exited with code 0` when a container ends; the
        assignment's tooling looks for it in the logs. No line of the programs, in any
        mode, has an `exit` action or that wording (they end with `action: end`)."""
        lottery = Lottery(self, 2, ROOT / "agencies")
        lottery.up()
        for k in (1, 2):
            self.assertEqual(lottery.wait(f"client{k}"), 0)
        outputs = {}
        for mode, extra in (("echo", ["-e", "CLI_LOOP_AMOUNT=2", "-e", "CLI_LOOP_PERIOD=100ms"]),
                            ("status", ["-e", "CLI_LOOP_AMOUNT=0"])):
            result = lottery.compose("run", "--rm", "--no-deps", "-T", "-e",
                                     f"CLI_MODE={mode}", *extra, "client1")
            outputs[f"client1 ({mode} mode)"] = (result.stdout + result.stderr).splitlines()
        lottery.stop("server")
        for name in ("server", "client1", "client2"):
            outputs[name] = lottery.logs(name)
        for name, lines in outputs.items():
            with self.subTest(container=name):
                self.assertTrue(any(is_log(l, "end", "success") for l in lines),
                                f"{name} logged no `action: end` line:\n" + "\n".join(lines))
                self.assertEqual(exit_like(lines), [])


class StatusTest(DockerTestCase):
    """The lottery's progress: the status page on the host's loopback and `make status`'s
    table, while the draw waits for a missing agency and after it."""

    def test_status_page_and_table_while_an_agency_is_missing_and_after_the_draw(self):
        lottery = Lottery(self, 2, ROOT / "agencies")
        lottery.up("server", "client1")
        self.assertEqual(lottery.networks("server"),
                         [f"{PROJECT}_lottery", f"{PROJECT}_status"])
        self.assertEqual(lottery.networks("client1"), [f"{PROJECT}_lottery"])
        # Agency 1 finished; the draw waits for agency 2, and the server says so (its
        # first draw_wait line, at start-up, still misses both).
        lottery.wait_for_log("client1", "fin", "success")
        waiting = lottery.wait_for_line(
            "server", "draw_wait with finished: 1",
            lambda l: is_log(l, "draw_wait", "in_progress") and field(l, "finished") == "1")
        self.assertEqual((field(waiting, "agencies"), field(waiting, "missing")), ("2", "2"),
                         waiting)

        status, kind, page = http_get(lottery.status_port, "/")
        self.assertEqual(status, 200)
        self.assertIn("text/html", kind)
        self.assertIn("<html", page.lower())
        status, kind, metrics = http_get(lottery.status_port, "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("text/plain", kind)
        samples = [l for l in metrics.splitlines() if l and not l.startswith("#")]
        self.assertNotEqual(samples, [], metrics)
        for line in samples:
            self.assertRegex(line, r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? \S+$")
        self.assertIn("# TYPE ", metrics)

        bets = {k: len(agency_rows(ROOT / "agencies" / f"agency-{k}.csv", k)) for k in (1, 2)}
        before = lottery.status_table().stdout
        header, missing, rows, total = parse_status_table(before)
        self.assertEqual(header, "lottery status: finished: 1 of 2 agencies | draw: not yet",
                         before)
        self.assertEqual(missing, "missing: 2", before)
        # Agency 1 waits for the draw on its connection; agency 2 has not started.
        self.assertEqual(rows, {1: ("yes", "yes", bets[1], "-"), 2: ("no", "no", 0, "-")},
                         before)
        self.assertEqual(total, (bets[1], "-"), before)

        lottery.up("client2")
        self.assertEqual(lottery.wait("client2"), 0)
        self.assertEqual(lottery.wait("client1"), 0)
        lottery.wait_for_log("server", "sorteo", "success")
        winners = {k: int(field(lottery.wait_for_log(f"client{k}", "consulta_ganadores",
                                                     "success"), "cant_ganadores"))
                   for k in (1, 2)}
        after = lottery.status_table().stdout
        header, missing, rows, total = parse_status_table(after)
        self.assertEqual(header, "lottery status: finished: 2 of 2 agencies | "
                                 f"draw: done, {sum(winners.values())} winners", after)
        self.assertEqual(missing, "missing: none", after)
        self.assertEqual(rows, {k: ("no", "yes", bets[k], str(winners[k])) for k in (1, 2)},
                         after)
        self.assertEqual(total, (sum(bets.values()), str(sum(winners.values()))), after)
        print(f"\n    status table after the draw:\n{after}", file=sys.stderr)


class DemoTest(DockerTestCase):
    """scripts/docker_demo.sh (what `make demo` runs once the images are built), on
    compose files of the test project."""

    def compose_file(self, n: int, data_dir: Path, batch: int | None = None) -> Path:
        """A compose file in a temporary directory; `batch` slows the upload down."""
        tmp = Path(tempfile.mkdtemp(prefix="loteria-demo-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        path = tmp / "docker-compose.yaml"
        run([sys.executable, ROOT / "compose_maker.py", str(n), "-o", path,
             "--data-dir", data_dir])
        if batch is not None:
            text = path.read_text()
            for k in range(1, n + 1):
                text = text.replace(f'      - "CLI_ID={k}"\n', f'      - "CLI_ID={k}"\n'
                                    f'      - "CLI_BATCH_MAX_AMOUNT={batch}"\n')
            path.write_text(text)
        self.addCleanup(run, [*COMPOSE, "-p", PROJECT, "-f", path, "down", "--volumes",
                              "--timeout", "5"], check=False)
        return path

    def demo(self, path: Path, **env: str) -> subprocess.Popen:
        """The demo as from a terminal: its own process group (Ctrl-C goes to all of it),
        with a TMPDIR of its own (self.tmpdir: where its log directory goes)."""
        self.tmpdir = Path(tempfile.mkdtemp(prefix="loteria-demo-tmp-"))
        self.addCleanup(shutil.rmtree, self.tmpdir, ignore_errors=True)
        return subprocess.Popen([ROOT / "scripts/docker_demo.sh", path], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**os.environ, "COMPOSE_PROJECT_NAME": PROJECT,
                                     "LOTERIA_STATUS_PORT": str(free_port()),
                                     "TMPDIR": str(self.tmpdir), **env})

    def log_dirs(self) -> list[Path]:
        return sorted(self.tmpdir.iterdir())

    def test_prints_the_draw_per_agency_and_little_else(self):
        demo = self.demo(self.compose_file(2, ROOT / "agencies"))
        out, _ = demo.communicate(timeout=WAIT)
        self.assertEqual(demo.returncode, 0, out)
        lines = out.splitlines()
        self.assertLess(len(lines), 20, out)
        # agency, bets, winners (the server's draw_summary), received (the client's).
        rows = {}
        for k in (1, 2):
            rows[k] = [l.split() for l in lines if l.split()[:1] == [str(k)]]
            self.assertEqual(len(rows[k]), 1, out)
            expected = agency_rows(ROOT / "agencies" / f"agency-{k}.csv", k)
            winners = sum(1 for r in expected if r[5] == WINNING_NUMBER)
            self.assertEqual(rows[k][0][1:4], [str(len(expected)), str(winners), str(winners)],
                             out)
        self.assertRegex(out, r"(?m)^draw: \d+ winners among 6000 bets of 2 agencies, "
                              r"drawn in \d+(ms|s)$")
        self.assertNotIn("result: fail", out)
        self.assertEqual(lottery_objects(f"com.docker.compose.project={PROJECT}"), [])
        # Its logs are removed, and the last line says so.
        self.assertEqual(self.log_dirs(), [], out)
        self.assertRegex(lines[-1], r"^bets stored: 6000   \(logs removed; KEEP=1 keeps them")

    def test_hold_keeps_the_server_and_its_page_until_ctrl_c(self):
        # HOLD=1 (`make demo-watch`): after the draw the server stays up, status page
        # included, until Ctrl-C; then the table, exit 0, everything removed.
        port = free_port()
        demo = self.demo(self.compose_file(2, ROOT / "agencies"), HOLD="1",
                         LOTERIA_STATUS_PORT=str(port))
        self.addCleanup(demo.kill)
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if "until Ctrl-C" in line:
                break
        self.assertIn(f"the status page stays at http://127.0.0.1:{port}/ until Ctrl-C",
                      "".join(seen))
        time.sleep(1)
        self.assertEqual(run(["docker", "inspect", "-f", "{{.State.Running}}",
                              "server"]).stdout.strip(), "true", "".join(seen))
        status, _, page = http_get(port, "/status.json")
        self.assertEqual(status, 200)
        self.assertIn('"drawn":true', page.replace(" ", ""), page)
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        out, _ = demo.communicate(timeout=WAIT)
        self.assertEqual(demo.returncode, 0, "".join(seen) + out)
        self.assertRegex(out, r"(?m)^draw: \d+ winners among 6000 bets of 2 agencies")
        self.assertNotIn("interrupted", out)
        self.assertEqual(lottery_objects(f"com.docker.compose.project={PROJECT}"), [])
        self.assertEqual(self.log_dirs(), [], out)

    def test_a_failed_start_keeps_the_logs_and_says_where(self):
        # Agency 2's file is missing: Docker refuses to start client2.
        data = Path(tempfile.mkdtemp(prefix="loteria-demo-data-"))
        self.addCleanup(shutil.rmtree, data, ignore_errors=True)
        shutil.copy(ROOT / "agencies/agency-1.csv", data)
        demo = self.demo(self.compose_file(2, data))
        out, _ = demo.communicate(timeout=WAIT)
        self.assertEqual(demo.returncode, 1, out)
        self.assertIn("the lottery did not start", out)
        kept = self.log_dirs()
        self.assertEqual(len(kept), 1, out)
        self.assertIn(f"the logs of this run are kept in {kept[0]}", out)
        self.assertTrue((kept[0] / "up.log").is_file(), out)
        self.assertEqual(lottery_objects(f"com.docker.compose.project={PROJECT}"), [])

    def test_ctrl_c_stops_it_at_once_and_removes_the_lottery(self):
        # Batches of one bet: the course dataset takes minutes to upload.
        demo = self.demo(self.compose_file(5, DATASET, batch=1))
        self.addCleanup(demo.kill)
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if "agencies started" in line:
                break
        self.assertIn("agencies started", "".join(seen))
        time.sleep(1)
        self.assertEqual(run(["docker", "inspect", "-f", "{{.State.Running}}",
                              "client1"]).stdout.strip(), "true", "the lottery ended already")
        started = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        out, _ = demo.communicate(timeout=WAIT)
        took = time.monotonic() - started
        print(f"\n    Ctrl-C to the demo's end (containers removed): {took:.1f} s",
              file=sys.stderr)
        self.assertEqual(demo.returncode, 130, "".join(seen) + out)
        self.assertIn("interrupted", out)
        self.assertLess(took, 30, "Ctrl-C waited for the agencies")
        self.assertEqual(lottery_objects(f"com.docker.compose.project={PROJECT}"), [])
        self.assertEqual(self.log_dirs(), [], "".join(seen) + out)

    def test_names_the_project_that_holds_the_container_names(self):
        lottery = Lottery(self, 0, ROOT / "agencies")
        lottery.up()
        result = run([ROOT / "scripts/docker_demo.sh", ROOT / "docker-compose.yaml"],
                     check=False)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(f"the container 'server' exists, of the Compose project '{PROJECT}'",
                      result.stderr)
        self.assertIn(f"-p {PROJECT} -f ", result.stderr)
        self.assertNotIn("make docker-compose-down", result.stderr)
        # It did not touch that lottery.
        self.assertEqual(run(["docker", "inspect", "-f", "{{.State.Running}}",
                              "server"]).stdout.strip(), "true")

    def test_same_project_on_another_file_gets_the_exact_down_command(self):
        # The demo's own project and compose file, but not the repository's: `make
        # docker-compose-down` would not remove it; the command it prints does.
        lottery = Lottery(self, 0, ROOT / "agencies")
        lottery.up()
        compose_file = lottery.files[1]
        result = run([ROOT / "scripts/docker_demo.sh", compose_file], check=False,
                     env={"COMPOSE_PROJECT_NAME": PROJECT})
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(f"a lottery of this compose file (Compose project '{PROJECT}') is "
                      "there already; remove it with: ", result.stderr)
        self.assertNotIn("make docker-compose-down", result.stderr)
        command = result.stderr.split("remove it with: ", 1)[1].splitlines()[0]
        self.assertEqual(command, " ".join([*COMPOSE, "-p", PROJECT, "-f", compose_file,
                                            "down", "--volumes"]))
        run(command.split())
        self.assertEqual(lottery_objects(f"com.docker.compose.project={PROJECT}"), [])


class GracefulStopTest(DockerTestCase):
    """`docker compose stop` mid-upload: exit code 0, closing logged, and every bet the
    client saw acknowledged is in the bets file (stored bets of an agency are always a
    prefix of its file: batches are stored in order, each whole or not at all). A
    stopped server started again lets the waiting clients finish, exactly once."""

    BETS = 10_000
    # Batches of 2 bets, one at a time (window 1: no pipelining), two fsyncs per
    # commit (bets file and journal): an upload takes tens of seconds (200 to 1000
    # bets/s per agency here, as the disk allows), while a stop takes a second or two.
    # Not many more bets: the server-stop test uploads both files to the end.
    BATCH = 2
    WINDOW = 1

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="loteria-docker-data-")
        cls.data = generate(Path(cls.tmp.name), 2, cls.BETS)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def start(self) -> Lottery:
        override = "services:\n" + "".join(
            f'  client{k}:\n    environment:\n      - "CLI_BATCH_MAX_AMOUNT={self.BATCH}"\n'
            f'      - "CLI_BATCH_WINDOW={self.WINDOW}"\n'
            for k in (1, 2))
        lottery = Lottery(self, 2, self.data, override=override)
        lottery.up()
        lottery.wait_for_log("client1", "upload", "in_progress")
        for k in (1, 2):
            finished = [l for l in lottery.logs(f"client{k}") if is_log(l, "upload", "success")]
            self.assertEqual(finished, [], "the upload ended before the stop: use more bets")
        return lottery

    def assert_acknowledged_kept(self, lottery: Lottery, stored: list[Row], k: int) -> int:
        """Agency k's rows among `stored` (the bets file) are a prefix of its file, at
        least as long as what its client saw acknowledged; returns that count."""
        closed = [l for l in lottery.logs(f"client{k}") if is_log(l, "close_connection", "success")]
        self.assertEqual(len(closed), 1, f"client{k}")
        acked = int(field(closed[0], "bets_acked"))
        stored = [r for r in stored if r[0] == k]
        self.assertGreaterEqual(len(stored), acked, f"agency {k} lost acknowledged bets")
        rows = agency_rows(self.data / f"agency-{k}.csv", k)
        self.assertEqual(stored, rows[:len(stored)], f"agency {k}: not a prefix of its file")
        return acked

    def test_stopping_a_client_mid_upload(self):
        lottery = self.start()
        lottery.stop("client1")
        self.assertEqual(lottery.exit_code("client1"), 0)
        logs = lottery.logs("client1")
        for action in ["signal", "close_connection", "close_signal_thread"]:
            self.assertTrue(any(is_log(l, action, "success") for l in logs), action)
        ends = [l for l in logs if is_log(l, "end", "success")]
        self.assertEqual([field(l, "status") for l in ends], ["interrupted"])
        lottery.assert_no_fail("client1")
        # Stop the server too (client2 is still uploading) so that the bets file is
        # read whole: it has stored every batch it took, in order.
        lottery.stop("server")
        self.assertEqual(lottery.exit_code("server"), 0)
        acked = self.assert_acknowledged_kept(lottery, lottery.stored(), 1)
        self.assertGreater(acked, 0)
        self.assertLess(acked, self.BETS, "the upload was not interrupted")

    def test_stopping_the_server_mid_upload(self):
        # The server stopped mid-upload exits 0; the clients keep reconnecting, and once
        # it is started again on the same volume they resume where its store ends and
        # finish: every bet stored exactly once, each agency its own winners.
        started = time.monotonic()
        lottery = self.start()
        lottery.stop("server")
        self.assertEqual(lottery.exit_code("server"), 0)
        logs = lottery.logs("server")
        for action in ["signal", "close_listener", "join_connections", "close_storage", "end"]:
            self.assertTrue(any(is_log(l, action, "success") for l in logs), action)
        # Each client's session ended with the server; it did not give up but keeps
        # trying to reconnect (and has not run its next session: no server to talk to).
        for k in (1, 2):
            lottery.wait_for_log(f"client{k}", "close_connection", "success")
            lottery.wait_for_log(f"client{k}", "reconnect", "in_progress")
            running = run(["docker", "inspect", "-f", "{{.State.Running}}", f"client{k}"])
            self.assertEqual(running.stdout.strip(), "true", f"client{k} gave up")
        # The stopped server's bets file is read whole: for each agency a prefix of its
        # file holding at least what its client saw acknowledged.
        stored = lottery.stored()
        acked = {k: self.assert_acknowledged_kept(lottery, stored, k) for k in (1, 2)}
        for k in (1, 2):
            self.assertLess(acked[k], self.BETS, f"client{k}: the upload was not interrupted")

        # Started again on the same volume: one recovery, which finds every bet it had.
        lottery.compose("start", "server")
        opened = lottery.wait_for_log("server", "storage_open", "success", nth=2)
        recovered = int(field(opened, "bets"))
        self.assertGreaterEqual(recovered, sum(acked.values()), opened)
        self.assertEqual(recovered, len(stored), opened)
        logs = lottery.logs("server")
        self.assertEqual(sum(is_log(l, "storage_open", "success") for l in logs), 2,
                         "one storage_open line per start")
        self.assertEqual(sum(is_log(l, "recovery", "success") for l in logs), 2,
                         "one recovery line per start")

        # The clients reconnect by themselves, resume after what is stored and finish.
        expected = collections.Counter()
        for k in (1, 2):
            client = f"client{k}"
            self.assertEqual(lottery.wait(client), 0, "\n".join(lottery.logs(client)[-40:]))
            rows = agency_rows(self.data / f"agency-{k}.csv", k)
            expected.update(rows)
            logs = lottery.logs(client)
            resumes = [l for l in logs if is_log(l, "resume", "success")]
            self.assertNotEqual(resumes, [], f"{client} resumed")
            self.assertGreaterEqual(int(field(resumes[-1], "stored_bets")), acked[k],
                                    resumes[-1])
            winners = sorted(r[3] for r in rows if r[5] == WINNING_NUMBER)
            counts = [field(l, "cant_ganadores") for l in logs
                      if is_log(l, "consulta_ganadores", "success")]
            self.assertEqual(counts, [str(len(winners))], client)
            documents = [field(l, "dnis") for l in logs if is_log(l, "ganadores", "success")]
            self.assertEqual(len(documents), 1, client)
            self.assertEqual(sorted(filter(None, documents[0].split(","))), winners, client)
            lottery.assert_no_fail(client)
        lottery.assert_no_fail("server")
        draws = [l for l in lottery.logs("server") if is_log(l, "sorteo", "success")]
        self.assertEqual(len(draws), 1, "the draw ran once")

        # Stopped again, its bets file holds every agency's file exactly once.
        lottery.stop("server")
        self.assertEqual(lottery.exit_code("server"), 0)
        stored = collections.Counter(lottery.stored())
        self.assertEqual(sum((expected - stored).values()), 0, "bets lost")
        self.assertEqual(sum((stored - expected).values()), 0, "bets stored twice")
        self.assertEqual(stored, expected)
        reconnects = {k: sum(is_log(l, "reconnect", "in_progress")
                             for l in lottery.logs(f"client{k}")) for k in (1, 2)}
        print(f"\n    docker compose stop/start server mid-upload: bets acked before the "
              f"stop: {acked} | recovered: {recovered} | reconnects: {reconnects} | "
              f"bets stored: {sum(stored.values())} | took: {time.monotonic() - started:.1f} s",
              file=sys.stderr)


class FaultTest(DockerTestCase):
    """Faults Docker can inflict mid-upload, which the programs get over by themselves:
    the server killed (SIGKILL) and started again, a client cut off its network and put
    back. Every client exits 0 on its own, the bets file holds each agency's file
    exactly once (nothing lost, nothing twice) and each agency gets its own winners.
    Each test prints what it did and what it found on stderr."""

    AGENCIES = 3
    BETS = 60_000
    # Small batches, two in flight (pipelining), so that the upload is still going on
    # when the fault comes (with the default window of 32, 30 000 bets were uploaded
    # in about 0.3-0.5 s, before the first fault).
    BATCH = 10
    WINDOW = 2

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="loteria-docker-data-")
        cls.data = generate(Path(cls.tmp.name), cls.AGENCIES, cls.BETS)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def clients(self) -> list[str]:
        return [f"client{k}" for k in range(1, self.AGENCIES + 1)]

    def start(self, extra_env: dict[str, dict[str, str]] | None = None) -> Lottery:
        """Starts the lottery with small batches (and `extra_env[client]` on top)."""
        override = "services:\n"
        for client in self.clients():
            env = {"CLI_BATCH_MAX_AMOUNT": str(self.BATCH), "CLI_BATCH_WINDOW": str(self.WINDOW),
                   **(extra_env or {}).get(client, {})}
            override += f"  {client}:\n    environment:\n" + "".join(
                f'      - "{name}={value}"\n' for name, value in env.items())
        lottery = Lottery(self, self.AGENCIES, self.data, override=override)
        lottery.up()
        return lottery

    def stored_batches(self, lottery: Lottery, agency: int | None = None) -> int:
        """`apuesta_recibida` success lines of the server so far (of one agency)."""
        return sum(1 for l in lottery.logs("server") if is_log(l, "apuesta_recibida", "success")
                   and (agency is None or field(l, "agency") == str(agency)))

    def wait_for_batches(self, lottery: Lottery, more_than: int,
                         agency: int | None = None) -> int:
        deadline = time.monotonic() + WAIT
        while (count := self.stored_batches(lottery, agency)) <= more_than:
            self.assertLess(time.monotonic(), deadline,
                            "the server stored no more batches:\n"
                            + "\n".join(lottery.logs("server")[-30:]))
            time.sleep(0.1)
        return count

    def assert_uploading(self, lottery: Lottery, *clients: str) -> None:
        for client in clients:
            done = [l for l in lottery.logs(client) if is_log(l, "upload", "success")]
            self.assertEqual(done, [], f"{client} finished its upload before the fault: "
                                       "use more bets")

    def finish(self, lottery: Lottery) -> dict[str, int]:
        """Waits for every client (exit 0, its own winners, no failure logged), stops
        the server and checks the bets file holds every agency's file exactly once.
        Returns figures to print."""
        for k, client in enumerate(self.clients(), 1):
            code = lottery.wait(client)
            self.assertEqual(code, 0, "\n".join(lottery.logs(client)[-40:]))
            rows = agency_rows(self.data / f"agency-{k}.csv", k)
            expected = sorted(r[3] for r in rows if r[5] == WINNING_NUMBER)
            logs = lottery.logs(client)
            counts = [field(l, "cant_ganadores") for l in logs
                      if is_log(l, "consulta_ganadores", "success")]
            self.assertEqual(counts, [str(len(expected))], client)
            documents = [field(l, "dnis") for l in logs if is_log(l, "ganadores", "success")]
            self.assertEqual(len(documents), 1, client)
            self.assertEqual(sorted(filter(None, documents[0].split(","))), expected, client)
            lottery.assert_no_fail(client)
        draws = [l for l in lottery.logs("server") if is_log(l, "sorteo", "success")]
        self.assertEqual(len(draws), 1, "the draw ran once")

        # A stopped server's bets file is read whole (nothing is being appended).
        lottery.stop("server")
        self.assertEqual(lottery.exit_code("server"), 0)
        stored = collections.Counter(lottery.stored())
        expected = collections.Counter()
        for k in range(1, self.AGENCIES + 1):
            expected.update(agency_rows(self.data / f"agency-{k}.csv", k))
        server_failures = [l for l in lottery.logs("server") if "result: fail" in l]
        for line in server_failures[:5]:
            print(f"\n    server: {line}", file=sys.stderr)
        lost = expected - stored
        duplicates = stored - expected
        figures = {
            "bets stored": sum(stored.values()),
            "bets expected": sum(expected.values()),
            "lost": sum(lost.values()),
            "duplicates": sum(duplicates.values()),
            "reconnects": sum(sum(is_log(l, "reconnect", "in_progress")
                                  for l in lottery.logs(c)) for c in self.clients()),
            "server fail lines": len(server_failures),
            "resumes": sum(sum(is_log(l, "resume", "success") for l in lottery.logs(c))
                           for c in self.clients()),
        }
        self.assertEqual(figures["lost"], 0, f"lost, e.g. {list(lost)[:3]}")
        self.assertEqual(figures["duplicates"], 0, f"stored twice, e.g. {list(duplicates)[:3]}")
        self.assertEqual(stored, expected)
        return figures

    def report(self, title: str, started: float, figures: dict) -> None:
        shown = " | ".join(f"{name}: {value}" for name, value in figures.items())
        print(f"\n    {title}: {shown} | took: {time.monotonic() - started:.1f} s",
              file=sys.stderr)

    def test_killed_server_restarts_and_every_agency_finishes_exactly_once(self):
        KILLS = 2
        DOWN = 1.5  # seconds between `docker kill` and `docker start`
        started = time.monotonic()
        lottery = self.start()
        batches_at_kill, bets_at_kill, bets_at_restart = [], [], []
        for kill in range(1, KILLS + 1):
            if kill == 1:
                # Every agency is uploading: some batches of each stored.
                for k in range(1, self.AGENCIES + 1):
                    self.wait_for_batches(lottery, 10, agency=k)
            else:
                # Soon after the restart (some agencies may still be backing off):
                # a few batches stored by the new server process.
                self.wait_for_batches(lottery, batches_at_kill[-1] + 20)
            self.assert_uploading(lottery, *self.clients())
            run(["docker", "kill", "--signal", "KILL", "server"])
            self.assertEqual(lottery.wait("server"), 137, "SIGKILL")
            # The dead server's log is complete: what it had stored (and acknowledged)
            # by its own account, which the restarted one must still have.
            stored_lines = [l for l in lottery.logs("server")
                            if is_log(l, "apuesta_recibida", "success")]
            batches_at_kill.append(len(stored_lines))
            logged = sum(int(field(l, "cantidad")) for l in stored_lines)
            bets_at_kill.append(logged)
            time.sleep(DOWN)
            run(["docker", "start", "server"])
            # Recovery: it opened the bets file it had (with every batch it
            # acknowledged) and is listening again.
            lottery.wait_for_log("server", "listen", "success", nth=kill + 1)
            logs = lottery.logs("server")
            starts = [i for i, l in enumerate(logs) if is_log(l, "config", "success")]
            self.assertEqual(len(starts), kill + 1, "one config line per start")
            opened = [l for l in logs[starts[-1]:] if is_log(l, "storage_open", "success")]
            self.assertNotEqual(opened, [], "the restarted server opened its store")
            self.assertGreater(int(field(opened[-1], "bets") or 0), 0, opened[-1])
            bets_at_restart.append(int(field(opened[-1], "bets")))
            self.assertGreaterEqual(bets_at_restart[-1], logged,
                                    "the restarted server lost bets it had stored")
        figures = self.finish(lottery)
        for client in self.clients():
            logs = lottery.logs(client)
            self.assertGreaterEqual(sum(is_log(l, "reconnect", "in_progress") for l in logs),
                                    1, f"{client} reconnected")
            self.assertGreaterEqual(sum(is_log(l, "resume", "success") for l in logs), 1,
                                    f"{client} resumed where the server's store ended")
        repairs = [l for l in lottery.logs("server") if is_log(l, "storage_repair", "success")]
        self.report("docker kill server mid-upload", started,
                    {"kills": KILLS, "down": f"{DOWN} s",
                     "batches stored before each kill": batches_at_kill,
                     "bets stored by then (server log)": bets_at_kill,
                     "bets recovered at each restart": bets_at_restart,
                     "storage repairs": len(repairs), **figures})

    def test_client_cut_off_the_network_reconnects_and_finishes_exactly_once(self):
        OFF = 5.0  # seconds client1 is off the network
        started = time.monotonic()
        # A short reply timeout, so that client1 notices the dead connection soon.
        lottery = self.start({"client1": {"CLI_IO_TIMEOUT": "3s"}})
        self.wait_for_batches(lottery, 30, agency=1)
        self.assert_uploading(lottery, "client1")
        network = lottery.network()
        run(["docker", "network", "disconnect", network, "client1"])
        batches_off = self.stored_batches(lottery, 1)
        time.sleep(OFF)
        # Off the network it made no progress (what was in flight may have landed).
        self.assertLessEqual(self.stored_batches(lottery, 1), batches_off + 5,
                             "client1 was not cut off")
        self.assert_uploading(lottery, "client1")
        run(["docker", "network", "connect", network, "client1"])
        figures = self.finish(lottery)
        logs = lottery.logs("client1")
        self.assertGreaterEqual(sum(is_log(l, "reconnect", "in_progress") for l in logs), 1,
                                "client1 reconnected")
        self.assertGreaterEqual(sum(is_log(l, "resume", "success") for l in logs), 1,
                                "client1 resumed")
        for line in [l for l in logs if is_log(l, "reconnect", "in_progress")][:3]:
            print(f"\n    client1: {line}", file=sys.stderr)
        server = lottery.logs("server")
        superseded = [l for l in server if is_log(l, "supersede", "success")
                      and field(l, "agency") == "1"]
        self.report("docker network disconnect client1 mid-upload", started,
                    {"network": network, "off": f"{OFF} s",
                     "batches of agency 1 before": batches_off,
                     "superseded connections": len(superseded), **figures})


class ConfigWithoutRebuildTest(DockerTestCase):
    def test_edited_config_takes_effect_after_a_restart(self):
        lottery = Lottery(self, 1, ROOT / "agencies")
        lottery.up()
        self.assertEqual(lottery.wait("client1"), 0)
        images = {c: run(["docker", "inspect", "-f", "{{.Image}}", c]).stdout.strip()
                  for c in ("server", "client1")}

        edit(lottery.config / "client.toml", ('mode = "bets"', 'mode = "echo"'),
             ("amount = 5", "amount = 3"), ('period = "1s"', 'period = "100ms"'))
        edit(lottery.config / "server.toml", ('level = "INFO"', 'level = "DEBUG"'))

        lottery.compose("restart", "server", "client1")
        self.assertEqual(lottery.wait("client1"), 0)
        logs = lottery.logs("client1")
        configs = [l for l in logs if is_log(l, "config", "success")]
        self.assertEqual(len(configs), 2)
        self.assertEqual((field(configs[1], "mode"), field(configs[1], "loop_amount"),
                          field(configs[1], "loop_period")), ("echo", "3", "100ms"))
        echoes = [l for l in logs if is_log(l, "receive_message", "success")]
        self.assertEqual([field(l, "msg") for l in echoes],
                         [f"[CLIENT 1] Message N°{k}" for k in (1, 2, 3)])
        self.assertEqual(sum(is_log(l, "loop_finished", "success") for l in logs), 1)

        server_configs = [l for l in lottery.logs("server") if is_log(l, "config", "success")]
        self.assertEqual([field(l, "logging_level") for l in server_configs],
                         ["INFO", "DEBUG"])
        for container, image in images.items():
            now = run(["docker", "inspect", "-f", "{{.Image}}", container]).stdout.strip()
            self.assertEqual(now, image, f"{container} runs another image")


class MakeTargetsTest(DockerTestCase):
    """The README's make targets on the committed docker-compose.yaml (5 agencies,
    agencies/), under the Compose project named after the checkout's directory."""

    def setUp(self) -> None:
        super().setUp()
        # Where the committed compose file publishes the status page (not 8080 here:
        # the machine may use it).
        self.status_port = free_port()

    def make(self, target: str, check=True) -> subprocess.CompletedProcess:
        return run(["make", "--no-print-directory", "-C", ROOT, target], timeout=600,
                   check=check, env={"LOTERIA_STATUS_PORT": str(self.status_port)})

    def test_status_without_a_lottery_is_a_clear_error(self):
        result = self.make("status", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no running container named 'server'", result.stderr)

    def test_status_asks_any_projects_lottery_and_ctrl_c_is_quiet(self):
        # A server alone of the test project: `make status` runs the client image on
        # that server's own network (loteria-test_lottery), whatever the project, and
        # makes nothing of this checkout's project.
        lottery = Lottery(self, 0, ROOT / "agencies")
        lottery.up()
        here = re.sub(r"[^a-z0-9_-]", "", ROOT.name.lower())
        self.assertEqual(lottery_objects(f"com.docker.compose.project={here}"), [],
                         "this checkout's lottery is running: stop it first")
        result = self.make("status")
        self.assertEqual(result.stderr, f"make status: the lottery of the Compose project "
                                        f"'{PROJECT}' (network {PROJECT}_lottery)\n")
        # Once (LOOP=0 by default), the server's own configuration: 5 agencies, none yet.
        header, missing, rows, total = parse_status_table(result.stdout)
        self.assertEqual((header, missing, total),
                         ("lottery status: finished: 0 of 5 agencies | draw: not yet",
                          "missing: 1-5", (0, "-")), result.stdout)
        self.assertEqual(lottery_objects(f"com.docker.compose.project={here}"), [],
                         "it made objects of this checkout's project")

        # LOOP=10, Ctrl-C after the first table: the client ends at once, and nothing
        # but log lines and the table is printed.
        status = subprocess.Popen(["make", "--no-print-directory", "-C", ROOT, "status",
                                   "LOOP=10", "PERIOD=1s"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.addCleanup(status.kill)
        seen = []
        for line in status.stdout:
            seen.append(line)
            if line.startswith("total "):
                break
        started = time.monotonic()
        os.killpg(status.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        out, err = status.communicate(timeout=30)
        self.assertLess(time.monotonic() - started, 10, "Ctrl-C waited for the loop")
        lines = (("".join(seen) + out).splitlines())
        self.assertIn("status: interrupted", lines[-1], lines)
        stray = [l for l in lines if not (re.match(r"\d{4}-\d\d-\d\d ", l)
                                          or l.startswith(("lottery status: ", "missing: ",
                                                           "agency ", "1-5 ", "total ")))]
        self.assertEqual(stray, [], "".join(seen) + out)
        self.assertNotIn("\n1\n", "\n" + err, err)
        self.assertEqual(run(["docker", "ps", "-aq", "--filter",
                              "ancestor=loteria-client:latest"]).stdout, "",
                         "the status container was left behind")

    def test_up_refuses_while_another_projects_lottery_holds_the_names(self):
        lottery = Lottery(self, 0, ROOT / "agencies")
        lottery.up()
        here = re.sub(r"[^a-z0-9_-]", "", ROOT.name.lower())
        self.assertEqual(lottery_objects(f"com.docker.compose.project={here}"), [],
                         "this checkout's lottery is running: stop it first")
        result = self.make("docker-compose-up", check=False)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        lines = [l for l in result.stderr.splitlines() if l.startswith("make docker-compose-up:")]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(f"the container 'server' exists, of the Compose project '{PROJECT}' "
                      f"(started from {lottery.files[1]}); remove that lottery with: "
                      f"{' '.join(COMPOSE)} -p {PROJECT} -f {lottery.files[1]} down --volumes",
                      lines[0])
        self.assertNotIn("Conflict", result.stdout + result.stderr)
        self.assertEqual(lottery_objects(f"com.docker.compose.project={here}"), [],
                         "it made objects of this checkout's project")
        self.assertEqual(run(["docker", "inspect", "-f", "{{.State.Running}}",
                              "server"]).stdout.strip(), "true")

    def test_up_logs_down(self):
        self.addCleanup(run, ["make", "-C", ROOT, "docker-compose-down"], check=False,
                        timeout=600)
        up = self.make("docker-compose-up")
        self.assertIn(f"status page: http://127.0.0.1:{self.status_port}/", up.stdout)
        project = run(["docker", "inspect", "-f",
                       '{{index .Config.Labels "com.docker.compose.project"}}',
                       "server"]).stdout.strip()
        for k in range(1, 6):
            code = int(run(["docker", "wait", f"client{k}"]).stdout)
            self.assertEqual(code, 0, f"client{k}")
        check = nc_test()
        self.assertEqual(check.stdout, "action: test_echo_server | result: success\n",
                         check.stderr)

        # `make status`: the table of the five agencies after the draw (each with the
        # winners its client was told of), and the page.
        winners = {}
        for k in range(1, 6):
            counts = [field(l, "cant_ganadores") for l in run(["docker", "logs", f"client{k}"])
                      .stdout.splitlines() if is_log(l, "consulta_ganadores", "success")]
            self.assertEqual(len(counts), 1, f"client{k}")
            winners[k] = counts[0]
        bets = {k: len(agency_rows(ROOT / "agencies" / f"agency-{k}.csv", k))
                for k in range(1, 6)}
        table = self.make("status").stdout
        header, missing, rows, total = parse_status_table(table)
        drawn = sum(map(int, winners.values()))
        self.assertEqual(header, "lottery status: finished: 5 of 5 agencies | "
                                 f"draw: done, {drawn} winners", table)
        self.assertEqual(missing, "missing: none", table)
        self.assertEqual(rows, {k: ("no", "yes", bets[k], winners[k]) for k in range(1, 6)},
                         table)
        self.assertEqual(total, (sum(bets.values()), str(drawn)), table)
        status, kind, page = http_get(self.status_port, "/")
        self.assertEqual((status, "text/html" in kind), (200, True))

        # `docker-compose-logs` follows the logs until interrupted.
        logs = subprocess.Popen(["make", "--no-print-directory", "-C", ROOT,
                                 "docker-compose-logs"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = logs.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(logs.pid, 15)
            out, _ = logs.communicate(timeout=30)
        text = out.decode("utf-8", "replace")
        self.assertIn("action: sorteo | result: success", text)
        self.assertEqual(text.count("action: consulta_ganadores | result: success"), 5)

        self.make("docker-compose-down")
        self.assertEqual(lottery_objects(f"com.docker.compose.project={project}"), [])


def lottery_objects(label: str) -> list[str]:
    """Containers, networks and volumes carrying `label`."""
    return [f"{kind}: {ident}"
            for kind in ("ps -a", "network ls", "volume ls")
            for ident in run(["docker", *kind.split(), "-q", "--filter",
                              f"label={label}"]).stdout.split()]


class ZzCleanupTest(unittest.TestCase):
    """Runs last (unittest sorts classes by name): nothing of the tests is left."""

    def test_nothing_is_left_behind(self):
        for label in (f"com.docker.compose.project={PROJECT}", TEST_LABEL):
            with self.subTest(label=label):
                self.assertEqual(lottery_objects(label), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
