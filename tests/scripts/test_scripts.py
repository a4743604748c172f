#!/usr/bin/env python3
"""The Docker tooling's scripts against a fake `docker` on PATH (no engine needed).

    python3 tests/scripts/test_scripts.py [-v] [unittest arguments]

Each test writes a fake `docker` into a temporary directory put first on PATH: it
answers the commands the script runs from a table of canned replies (the first entry
whose words are each part of an argument, in order, wins) and logs every command
line it got. Covered: scripts/build_image.sh on the output of both builders (the
legacy one and BuildKit's plain progress), successful and failed; the command
scripts/docker_demo.sh and scripts/check_names.sh (`make docker-compose-up`) suggest
when the container names are taken; the `docker run` that `make status` makes. (tests/docker/ runs them on
the real engine too.) Python 3.10 or later, standard library only.
"""

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_DOCKER = r'''#!/usr/bin/env python3
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({"argv": argv, "progress": os.environ.get("BUILDKIT_PROGRESS")}) + "\n")
with open(os.environ["FAKE_DOCKER_RULES"]) as f:
    rules = json.load(f)
def matches(words):
    i = 0
    for arg in argv:
        if i < len(words) and words[i] in arg:
            i += 1
    return i == len(words)
for rule in rules:
    if matches(rule["words"]):
        sys.stdout.write(rule.get("stdout", ""))
        sys.stderr.write(rule.get("stderr", ""))
        sys.exit(rule.get("rc", 0))
sys.stderr.write("fake docker: no canned reply for: " + " ".join(argv) + "\n")
sys.exit(125)
'''


class FakeDocker:
    """A fake `docker` on PATH answering from `rules`: [(words, stdout, rc), …]."""

    def __init__(self, test: unittest.TestCase, rules: list[tuple[list[str], str, int]]):
        tmp = tempfile.TemporaryDirectory(prefix="loteria-fake-docker-")
        test.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        docker = self.dir / "docker"
        docker.write_text(FAKE_DOCKER)
        docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
        self.log = self.dir / "log"
        self.log.write_text("")
        (self.dir / "rules.json").write_text(json.dumps(
            [{"words": words, "stdout": out, "rc": rc} for words, out, rc in rules]))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROJECT_NAME"}
        return {**env, "PATH": f"{self.dir}:{os.environ['PATH']}",
                "FAKE_DOCKER_LOG": str(self.log),
                "FAKE_DOCKER_RULES": str(self.dir / "rules.json"), **extra}

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def run(args, env) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60,
                          cwd=ROOT)


def canned(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ----- what `docker build` prints (shortened from real builds of Dockerfile.server) -----

LEGACY_NOTICE = canned("""
    DEPRECATED: The legacy builder is deprecated and will be removed in a future release.
                Install the buildx component to build images with BuildKit:
                https://docs.docker.com/go/buildx/

    Sending build context to Docker daemon  1.234MB
    """)

LEGACY_CACHED = LEGACY_NOTICE + canned("""
    Step 1/5 : FROM rust:1.95-slim-bookworm AS builder
     ---> 1a2b3c4d5e6f
    Step 2/5 : WORKDIR /build
     ---> Using cache
     ---> 2b3c4d5e6f70
    Step 3/5 : COPY Cargo.toml Cargo.lock ./
     ---> Using cache
     ---> 3c4d5e6f7081
    Step 4/5 : FROM debian:bookworm-slim
     ---> 4d5e6f708192
    Step 5/5 : COPY --from=builder /build/target/release/server /usr/local/bin/server
     ---> Using cache
     ---> 5e6f708192a3
    Successfully built 5e6f708192a3
    Successfully tagged loteria-server:latest
    """)

LEGACY_BUILT = LEGACY_NOTICE + canned("""
    Step 1/5 : FROM rust:1.95-slim-bookworm AS builder
     ---> 1a2b3c4d5e6f
    Step 2/5 : WORKDIR /build
     ---> Using cache
     ---> 2b3c4d5e6f70
    Step 3/5 : COPY src ./src
     ---> 6f708192a3b4
    Step 4/5 : RUN cargo build --release --locked --bins
     ---> Running in 708192a3b4c5
       Compiling loteria v0.1.0 (/build)
        Finished `release` profile [optimized] target(s) in 41.02s
    Removing intermediate container 708192a3b4c5
     ---> 8192a3b4c5d6
    Step 5/5 : COPY --from=builder /build/target/release/server /usr/local/bin/server
     ---> 92a3b4c5d6e7
    Successfully built 92a3b4c5d6e7
    Successfully tagged loteria-server:latest
    """)

# The base image is neither here nor in a registry: the error follows the FROM line.
LEGACY_PULL_DENIED = LEGACY_NOTICE + canned("""
    Step 1/5 : FROM rust:1.95-slim-bookworm AS builder
    pull access denied for rust, repository does not exist or may require 'docker login': denied: requested access to the resource is denied
    """)

LEGACY_RUN_FAILED = LEGACY_NOTICE + canned("""
    Step 1/5 : FROM rust:1.95-slim-bookworm AS builder
     ---> 1a2b3c4d5e6f
    Step 2/5 : WORKDIR /build
     ---> Using cache
     ---> 2b3c4d5e6f70
    Step 3/5 : RUN cargo build --release --locked --bins
     ---> Running in 708192a3b4c5
    error[E0425]: cannot find value `x` in this scope
    The command '/bin/sh -c cargo build --release --locked --bins' returned a non-zero code: 101
    """)

BUILDKIT_HEAD = canned("""
    #0 building with "default" instance using docker driver

    #1 [internal] load build definition from Dockerfile.server
    #1 transferring dockerfile: 1.98kB done
    #1 DONE 0.0s

    #2 [internal] load metadata for docker.io/library/debian:bookworm-slim
    #2 DONE 0.0s

    #3 [internal] load metadata for docker.io/library/rust:1.95-slim-bookworm
    #3 DONE 0.0s

    #4 [internal] load .dockerignore
    #4 transferring context: 2B done
    #4 DONE 0.0s

    #5 [builder 1/4] FROM docker.io/library/rust:1.95-slim-bookworm
    #5 DONE 0.0s

    #6 [stage-1 1/2] FROM docker.io/library/debian:bookworm-slim
    #6 DONE 0.0s

    #7 [internal] load build context
    #7 transferring context: 1.23MB 0.1s done
    #7 DONE 0.1s

    #8 [builder 2/4] WORKDIR /build
    #8 CACHED

    """)

BUILDKIT_TAIL = canned("""
    #12 exporting to image
    #12 exporting layers done
    #12 writing image sha256:5e6f708192a35e6f708192a35e6f708192a35e6f708192a35e6f708192a3 done
    #12 naming to docker.io/library/loteria-server:latest done
    #12 DONE 0.0s
    """)

BUILDKIT_CACHED = BUILDKIT_HEAD + canned("""
    #9 [builder 3/4] COPY src ./src
    #9 CACHED

    #10 [builder 4/4] RUN cargo build --release --locked --bins
    #10 CACHED

    #11 [stage-1 2/2] COPY --from=builder /build/target/release/server /usr/local/bin/server
    #11 CACHED

    """) + BUILDKIT_TAIL

BUILDKIT_BUILT = BUILDKIT_HEAD + canned("""
    #9 [builder 3/4] COPY src ./src
    #9 DONE 0.1s

    #10 [builder 4/4] RUN cargo build --release --locked --bins
    #10 0.412    Compiling loteria v0.1.0 (/build)
    #10 41.05     Finished `release` profile [optimized] target(s) in 41.02s
    #10 DONE 41.2s

    #11 [stage-1 2/2] COPY --from=builder /build/target/release/server /usr/local/bin/server
    #11 DONE 0.1s

    """) + BUILDKIT_TAIL

BUILDKIT_PULL_DENIED = canned("""
    #0 building with "default" instance using docker driver

    #1 [internal] load build definition from Dockerfile.server
    #1 transferring dockerfile: 1.98kB done
    #1 DONE 0.0s

    #2 [internal] load metadata for docker.io/library/rust:1.95-slim-bookworm
    #2 ERROR: pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed
    ------
     > [internal] load metadata for docker.io/library/rust:1.95-slim-bookworm:
    ------
    Dockerfile.server:7
    --------------------
       5 |     # build finds every builder layer in the cache, so the crate compiles once for both.
       6 |
       7 | >>> FROM rust:1.95-slim-bookworm AS builder
    --------------------
    ERROR: failed to solve: rust:1.95-slim-bookworm: failed to resolve source metadata for docker.io/library/rust:1.95-slim-bookworm: pull access denied, repository does not exist or may require authorization
    """)

BUILDKIT_RUN_FAILED = BUILDKIT_HEAD + canned("""
    #9 [builder 3/4] COPY src ./src
    #9 CACHED

    #10 [builder 4/4] RUN cargo build --release --locked --bins
    #10 0.398 error[E0425]: cannot find value `x` in this scope
    #10 ERROR: process "/bin/sh -c cargo build --release --locked --bins" did not complete successfully: exit code: 101
    ------
     > [builder 4/4] RUN cargo build --release --locked --bins:
    0.398 error[E0425]: cannot find value `x` in this scope
    ------
    ERROR: failed to solve: process "/bin/sh -c cargo build --release --locked --bins" did not complete successfully: exit code: 101
    """)


class BuildImageTest(unittest.TestCase):
    """scripts/build_image.sh: a line for an image that is up to date, the steps that
    ran otherwise, the error of a failed build and never "up to date" after one."""

    def build(self, output: str, rc: int, **env: str) -> subprocess.CompletedProcess:
        docker = FakeDocker(self, [(["build"], output, rc)])
        result = run([ROOT / "scripts/build_image.sh", "Dockerfile.server",
                      "loteria-server:latest"], docker.env(**env))
        calls = docker.calls()
        self.assertEqual(len(calls), 1, calls)
        self.assertEqual(calls[0]["argv"], ["build", "--force-rm", "-f", "Dockerfile.server",
                                            "-t", "loteria-server:latest", "."])
        # BuildKit is asked for plain progress (one line per event).
        self.assertEqual(calls[0]["progress"], "plain")
        return result

    def assert_failed(self, result: subprocess.CompletedProcess, error: str) -> None:
        self.assertEqual(result.returncode, 1, result)
        self.assertIn(error, result.stdout)
        self.assertNotIn("up to date", result.stdout + result.stderr)
        self.assertNotIn(": built", result.stdout + result.stderr)
        self.assertIn("docker build of loteria-server:latest (Dockerfile.server) failed",
                      result.stderr)

    def test_legacy_all_cached_is_one_line(self):
        result = self.build(LEGACY_CACHED, 0)
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "loteria-server:latest: up to date (3 steps from the cache)\n",
                          ""))

    def test_legacy_shows_the_steps_that_ran(self):
        result = self.build(LEGACY_BUILT, 0)
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout.splitlines(), [
            "Step 3/5 : COPY src ./src",
            "Step 4/5 : RUN cargo build --release --locked --bins",
            "   Compiling loteria v0.1.0 (/build)",
            "    Finished `release` profile [optimized] target(s) in 41.02s",
            "Step 5/5 : COPY --from=builder /build/target/release/server /usr/local/bin/server",
            "loteria-server:latest: built (3 steps ran, 1 from the cache)",
        ])

    def test_legacy_pull_error_after_from_is_shown(self):
        result = self.build(LEGACY_PULL_DENIED, 1)
        self.assert_failed(result, "pull access denied for rust")
        self.assertEqual(result.stdout.splitlines()[0],
                         "Step 1/5 : FROM rust:1.95-slim-bookworm AS builder")

    def test_legacy_failed_step_is_shown(self):
        result = self.build(LEGACY_RUN_FAILED, 1)
        self.assert_failed(result, "returned a non-zero code: 101")
        self.assertIn("Step 3/5 : RUN cargo build --release --locked --bins\n"
                      "error[E0425]: cannot find value `x` in this scope\n", result.stdout)

    def test_buildkit_all_cached_is_one_line(self):
        result = self.build(BUILDKIT_CACHED, 0)
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "loteria-server:latest: up to date (4 steps from the cache)\n",
                          ""))

    def test_buildkit_shows_the_steps_that_ran(self):
        result = self.build(BUILDKIT_BUILT, 0)
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout.splitlines(), [
            "[builder 3/4] COPY src ./src",
            "[builder 4/4] RUN cargo build --release --locked --bins",
            "   Compiling loteria v0.1.0 (/build)",
            "    Finished `release` profile [optimized] target(s) in 41.02s",
            "[stage-1 2/2] COPY --from=builder /build/target/release/server "
            "/usr/local/bin/server",
            "loteria-server:latest: built (3 steps ran, 1 from the cache)",
        ])

    def test_buildkit_pull_error_is_shown(self):
        result = self.build(BUILDKIT_PULL_DENIED, 1)
        self.assert_failed(result, "ERROR: pull access denied")
        self.assertIn("[internal] load metadata for docker.io/library/rust:1.95-slim-bookworm\n"
                      "ERROR: pull access denied", result.stdout)
        self.assertIn("ERROR: failed to solve:", result.stdout)

    def test_buildkit_failed_step_is_shown(self):
        result = self.build(BUILDKIT_RUN_FAILED, 1)
        self.assert_failed(result, "did not complete successfully: exit code: 101")
        self.assertIn("[builder 4/4] RUN cargo build --release --locked --bins\n"
                      "error[E0425]: cannot find value `x` in this scope\n"
                      "ERROR: process", result.stdout)

    def test_a_failure_with_nothing_recognised_is_still_a_failure(self):
        result = self.build("Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
                            " Is the docker daemon running?\n", 1)
        self.assert_failed(result, "Cannot connect to the Docker daemon")

    def test_verbose_shows_everything(self):
        result = self.build(LEGACY_CACHED, 0, VERBOSE="1")
        self.assertEqual((result.returncode, result.stdout), (0, LEGACY_CACHED))


def project_of(directory: Path) -> str:
    """The Compose project name of a compose file in `directory` (its name, lower
    case, only letters, digits, - and _)."""
    return "".join(c for c in directory.name.lower() if c.isascii() and (c.isalnum() or c in "-_"))


class DemoConflictTest(unittest.TestCase):
    """scripts/docker_demo.sh when a lottery of the same Compose project holds the
    container names: `make docker-compose-down` only for the repository's own compose
    file under its default project name, else the exact `down` command."""

    SERVICES = "server\nclient1\nclient2\n"

    def demo(self, file: Path, owner: str, files: str, **env: str) -> str:
        docker = FakeDocker(self, [
            (["compose", "version"], "Docker Compose version v2.30.0\n", 0),
            (["compose", "config", "--services"], self.SERVICES, 0),
            (["inspect", "server"], f"{owner}|{files}\n", 0),
            (["inspect"], "", 1),
        ])
        result = run([ROOT / "scripts/docker_demo.sh", file], docker.env(**env))
        self.assertEqual(result.returncode, 1, result)
        self.assertFalse([c for c in docker.calls() if "up" in c["argv"]], "it started one")
        return result.stderr

    def test_the_repositorys_compose_file_suggests_make_docker_compose_down(self):
        file = ROOT / "docker-compose.yaml"
        stderr = self.demo(file, project_of(ROOT), str(file))
        self.assertIn(f"a lottery of this compose file (Compose project '{project_of(ROOT)}') "
                      "is there already; remove it with: make docker-compose-down\n", stderr)

    def test_another_file_of_the_same_project_gets_the_exact_command(self):
        with tempfile.TemporaryDirectory(prefix="tp0-") as tmp:
            file = Path(tmp) / "tp0.yaml"
            file.write_text("services: {}\n")
            project = project_of(Path(tmp))
            stderr = self.demo(file, project, str(file))
        self.assertIn(f"remove it with: docker compose -p {project} -f {file} down --volumes\n",
                      stderr)
        self.assertNotIn("make docker-compose-down", stderr)

    def test_compose_project_name_gets_the_exact_command(self):
        file = ROOT / "docker-compose.yaml"
        stderr = self.demo(file, "mine", str(file), COMPOSE_PROJECT_NAME="mine")
        self.assertIn(f"remove it with: docker compose -p mine -f {file} down --volumes\n",
                      stderr)
        self.assertNotIn("make docker-compose-down", stderr)


class CheckNamesTest(unittest.TestCase):
    """scripts/check_names.sh (run by `make docker-compose-up` and the demo): names
    the project holding the container names and the exact `down` command; with
    --allow-own, this file's own project is no conflict. It creates nothing."""

    def check(self, owner: str, *args: str) -> tuple[subprocess.CompletedProcess, list]:
        docker = FakeDocker(self, [
            (["compose", "version"], "Docker Compose version v2.30.0\n", 0),
            (["compose", "config", "--services"], "server\nclient1\n", 0),
            (["inspect", "server"], f"{owner}|/tmp/tp0/alone.yaml\n", 0),
            (["inspect"], "", 1),
        ])
        result = run([ROOT / "scripts/check_names.sh", *args, ROOT / "docker-compose.yaml"],
                     docker.env(CHECK_NAMES_AS="make docker-compose-up"))
        return result, docker.calls()

    def test_another_project_is_named_with_its_down_command(self):
        for args in ([], ["--allow-own"]):
            with self.subTest(args=args):
                result, calls = self.check("tp0", *args)
                self.assertEqual(result.returncode, 1, result)
                self.assertEqual(result.stderr,
                                 "make docker-compose-up: the container 'server' exists, of "
                                 "the Compose project 'tp0' (started from "
                                 "/tmp/tp0/alone.yaml); remove that lottery with: docker "
                                 "compose -p tp0 -f /tmp/tp0/alone.yaml down --volumes\n")
                # Only questions: config, inspect.
                self.assertEqual({c["argv"][0] for c in calls}, {"compose", "inspect"}, calls)
                self.assertFalse([c for c in calls if "config" not in c["argv"]
                                  and c["argv"][0] == "compose"
                                  and "version" not in c["argv"]], calls)

    def test_own_project_is_allowed_only_with_allow_own(self):
        result, _ = self.check(project_of(ROOT), "--allow-own")
        self.assertEqual((result.returncode, result.stderr), (0, ""), result)
        result, _ = self.check(project_of(ROOT))
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("remove it with: make docker-compose-down", result.stderr)

    def test_free_names_pass_silently(self):
        docker = FakeDocker(self, [
            (["compose", "version"], "Docker Compose version v2.30.0\n", 0),
            (["compose", "config", "--services"], "server\nclient1\n", 0),
            (["inspect"], "", 1),
        ])
        result = run([ROOT / "scripts/check_names.sh", ROOT / "docker-compose.yaml"],
                     docker.env())
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))


class MakeStatusTest(unittest.TestCase):
    """`make status`: the client image in status mode with `docker run --rm` on the
    running `server` container's network (the `*_lottery` one), whatever Compose
    project (or none) made it; the line on stderr says whose lottery it asked."""

    ID = "4f1c0e5b9a2d" + "7" * 52
    TABLE = "lottery status: finished: 0 of 5 agencies | draw: not yet\n"

    def make_status(self, *args: str, networks="tp0_status\ntp0_lottery\n", owner="tp0",
                    running=True) -> tuple[subprocess.CompletedProcess, list[dict]]:
        docker = FakeDocker(self, [
            (["compose", "version"], "Docker Compose version v2.30.0\n", 0),
            (["inspect", ".State.Running", "server"], self.ID + "\n" if running else "", 0),
            (["inspect", "NetworkSettings.Networks", "server"], networks, 0),
            (["inspect", 'com.docker.compose.project"}}', "server"], owner + "\n", 0),
            (["run"], self.TABLE, 0),
        ])
        result = run(["make", "--no-print-directory", "-C", ROOT, "status", *args],
                     docker.env())
        return result, docker.calls()

    def the_run(self, calls: list[dict]) -> list[str]:
        runs = [c["argv"] for c in calls if c["argv"][0] == "run"]
        self.assertEqual(len(runs), 1, calls)
        self.assertFalse([c for c in calls if c["argv"][0] == "compose"
                          and "version" not in c["argv"]], "it asked Compose")
        return runs[0]

    def test_any_projects_server_gets_the_table_once(self):
        result, calls = self.make_status()
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout, self.TABLE)
        self.assertEqual(result.stderr, "make status: the lottery of the Compose project "
                                        "'tp0' (network tp0_lottery)\n")
        self.assertEqual(self.the_run(calls), [
            "run", "--rm", "--pull", "never", "--network", "tp0_lottery",
            "-v", f"{ROOT}/config:/app/config:ro", "-e", "CLI_MODE=status",
            "-e", "CLI_ID=1", "-e", "CLI_SERVER_ADDRESS=server:12345",
            "-e", "CLI_LOOP_AMOUNT=0", "-e", "CLI_RETRY_DEADLINE=10s",
            "loteria-client:latest"])

    def test_loop_and_period_are_passed_on(self):
        result, calls = self.make_status("LOOP=10", "PERIOD=2s")
        self.assertEqual(result.returncode, 0, result)
        argv = self.the_run(calls)
        self.assertIn("CLI_LOOP_AMOUNT=10", argv)
        self.assertIn("CLI_LOOP_PERIOD=2s", argv)

    def test_without_a_lottery_network_the_first_one_and_no_project(self):
        result, calls = self.make_status(networks="bridge\n", owner="")
        self.assertEqual(result.returncode, 0, result)
        self.assertIn("--network bridge ", " ".join(self.the_run(calls)) + " ")
        self.assertEqual(result.stderr, "make status: the lottery of a server made outside "
                                        "Compose (network bridge)\n")

    def test_no_running_server_is_a_clear_error_and_runs_nothing(self):
        result, calls = self.make_status(running=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("make status: no running container named 'server'", result.stderr)
        self.assertEqual([c for c in calls if c["argv"][0] == "run"], [])


class MakeStatusTlsTest(MakeStatusTest):
    """`make status` against a server with SERVER_TLS_CERT in its environment: over
    TLS as agency 1, this checkout's CA certificate, agency-1.pem and agency-1.key
    mounted read-only (and nothing else of certs/); a clear error without them."""

    SERVER_ENV = "PATH=/usr/bin\nSERVER_TLS_CA=/app/certs/ca.pem\nSERVER_TLS_CERT=/app/certs/server.pem\n"

    def make_status(self, *args: str, networks="tp0_status\ntp0_lottery\n", owner="tp0",
                    running=True) -> tuple[subprocess.CompletedProcess, list[dict]]:
        docker = FakeDocker(self, [
            (["compose", "version"], "Docker Compose version v2.30.0\n", 0),
            (["inspect", ".State.Running", "server"], self.ID + "\n" if running else "", 0),
            (["inspect", "NetworkSettings.Networks", "server"], networks, 0),
            (["inspect", 'com.docker.compose.project"}}', "server"], owner + "\n", 0),
            (["inspect", ".Config.Env", "server"], self.SERVER_ENV, 0),
            (["run"], self.TABLE, 0),
        ])
        result = run(["make", "--no-print-directory", "-C", ROOT, "status", *args],
                     docker.env())
        return result, docker.calls()

    def setUp(self) -> None:
        missing = [f for f in ("ca.pem", "agency-1.pem", "agency-1.key")
                   if not (ROOT / "certs" / f).is_file()]
        if missing:
            result = subprocess.run([ROOT / "scripts/make-certs.sh", "--brief"],
                                    capture_output=True, text=True, cwd=ROOT, timeout=120,
                                    env={k: v for k, v in os.environ.items()
                                         if k not in ("CERTS_DIR", "CERTS_AGENCIES")})
            self.assertEqual(result.returncode, 0, result)

    def test_any_projects_server_gets_the_table_once(self):
        result, calls = self.make_status()
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout, self.TABLE)
        certs = ROOT / "certs"
        self.assertEqual(self.the_run(calls), [
            "run", "--rm", "--pull", "never", "--network", "tp0_lottery",
            "-v", f"{ROOT}/config:/app/config:ro",
            "--mount", f"type=bind,source={certs}/ca.pem,target=/app/certs/ca.pem,readonly",
            "--mount", f"type=bind,source={certs}/agency-1.pem,target=/app/certs/agency-1.pem,"
                       "readonly",
            "--mount", f"type=bind,source={certs}/agency-1.key,target=/app/certs/agency-1.key,"
                       "readonly",
            "-e", "CLI_TLS_CA=/app/certs/ca.pem", "-e", "CLI_TLS_CERT=/app/certs/agency-1.pem",
            "-e", "CLI_TLS_KEY=/app/certs/agency-1.key",
            "-e", "CLI_MODE=status", "-e", "CLI_ID=1", "-e", "CLI_SERVER_ADDRESS=server:12345",
            "-e", "CLI_LOOP_AMOUNT=0", "-e", "CLI_RETRY_DEADLINE=10s",
            "loteria-client:latest"])

    def test_without_a_lottery_network_the_first_one_and_no_project(self):
        result, calls = self.make_status(networks="bridge\n", owner="")
        self.assertEqual(result.returncode, 0, result)
        self.assertIn("CLI_TLS_KEY=/app/certs/agency-1.key", self.the_run(calls))

    def test_plaintext_server_gets_no_certificates(self):
        self.SERVER_ENV = "PATH=/usr/bin\nSERVER_AGENCIES=5\n"
        result, calls = self.make_status()
        self.assertEqual(result.returncode, 0, result)
        argv = self.the_run(calls)
        self.assertNotIn("--mount", argv)
        self.assertFalse([a for a in argv if "TLS" in a], argv)


# ----- scripts/make-certs.sh -----

def openssl(*args: str, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {result.stderr}")
    return result


def extensions(cert: Path) -> dict[str, tuple[bool, str]]:
    """The X509v3 extensions of `openssl x509 -text`: name -> (critical, value), the
    value's lines joined by a space."""
    text = openssl("x509", "-in", str(cert), "-noout", "-text").stdout
    lines = text.splitlines()
    start = lines.index("        X509v3 extensions:")
    found: dict[str, tuple[bool, str]] = {}
    name = None
    for line in lines[start + 1:]:
        if not line.startswith("            "):
            break
        if not line.startswith("                "):
            head = line.strip()
            critical = head.endswith(" critical")
            name = head.removesuffix(" critical").removesuffix(":")
            found[name] = (critical, "")
        else:
            assert name is not None, text
            critical, value = found[name]
            found[name] = (critical, (value + " " + line.strip()).strip())
    return found


def certificate_fields(cert: Path) -> dict[str, str]:
    """Version, signature algorithm, key curve, subject and issuer of a certificate."""
    text = openssl("x509", "-in", str(cert), "-noout", "-text", "-nameopt", "RFC2253").stdout
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        for key in ("Version:", "Signature Algorithm:", "ASN1 OID:", "Subject:", "Issuer:",
                    "Public Key Algorithm:"):
            if line.startswith(key) and key not in fields:
                fields[key] = line[len(key):].strip()
    return fields


KEY_ID = r"^([0-9A-F]{2}:){19}[0-9A-F]{2}$"


class MakeCertsTest(unittest.TestCase):
    """scripts/make-certs.sh: the files and their extensions, exactly; idempotent (a
    second run leaves every byte and modification time); new agencies added alone;
    a broken, expiring, foreign or wrong leaf issued again and nothing else; a broken
    CA makes everything anew; the file modes."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="loteria-certs-")
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.dir = self.tmp / "certs"

    def make(self, *args: str, agencies: int | None = 5, directory: Path | None = None,
             check=True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("CERTS_DIR", "CERTS_AGENCIES")}
        env["CERTS_DIR"] = str(directory or self.dir)
        if agencies is not None:
            env["CERTS_AGENCIES"] = str(agencies)
        result = subprocess.run([ROOT / "scripts/make-certs.sh", *args], capture_output=True,
                                text=True, env=env, timeout=120)
        if check:
            self.assertEqual(result.returncode, 0, result)
        return result

    def lines(self, result: subprocess.CompletedProcess) -> dict[str, str]:
        """What the run said of each file: {file name: the rest of its line}."""
        said = {}
        for line in result.stdout.splitlines():
            path, _, what = line.partition(" ")
            name = Path(path).name if not path.endswith("/") else "/"
            self.assertNotIn(name, said, result.stdout)
            said[name] = what.strip()
        return said

    def snapshot(self, directory: Path | None = None) -> dict[str, tuple[bytes, int, int]]:
        """{file name: (bytes, mtime in ns, mode)} of every file of the directory."""
        directory = directory or self.dir
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode))
                for p in sorted(directory.iterdir())}

    @staticmethod
    def names(agencies: int) -> set[str]:
        return {"ca.pem", "ca.key", "server.pem", "server.key",
                *(f"agency-{k}.{ext}" for k in range(1, agencies + 1) for ext in ("pem", "key"))}

    def assert_verifies(self, name: str, purpose: str, directory: Path | None = None) -> None:
        directory = directory or self.dir
        result = openssl("verify", "-no-CApath", "-no-CAstore", "-x509_strict", "-purpose",
                         purpose, "-CAfile", str(directory / "ca.pem"),
                         str(directory / f"{name}.pem"), check=False)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout, f"{directory / name}.pem: OK\n")

    def test_first_run_makes_every_file_and_a_second_run_changes_nothing(self):
        first = self.make()
        self.assertEqual(set(self.lines(first)), self.names(5) | {"/"}, first.stdout)
        self.assertEqual(self.lines(first)["/"], "created (mode 0700)")
        for name, what in self.lines(first).items():
            if name.endswith(".key"):
                self.assertEqual(what, "created", name)
            elif name.endswith(".pem"):
                self.assertRegex(what, r"^issued, valid until ", name)
        before = self.snapshot()
        self.assertEqual(set(before), self.names(5))
        time.sleep(0.05)  # a file written again would get a later mtime
        second = self.make()
        self.assertEqual(self.snapshot(), before, "the second run changed a file")
        said = self.lines(second)
        self.assertEqual(set(said), self.names(5), second.stdout)
        self.assertEqual({what.split(",")[0] for what in said.values()}, {"kept"}, second.stdout)
        # --brief: one line when everything is kept.
        brief = self.make("--brief")
        self.assertEqual(brief.stdout, f"{self.dir}/: every key and certificate kept "
                                       "(CA, server, agencies 1-5)\n")
        self.assertEqual(self.snapshot(), before)

    def test_modes_guard_the_directory_and_let_the_container_user_read_its_key(self):
        self.make()
        self.assertEqual(stat.S_IMODE(self.dir.stat().st_mode), 0o700)
        modes = {name: mode for name, (_, _, mode) in self.snapshot().items()}
        self.assertEqual(modes, {name: 0o600 if name == "ca.key" else 0o644
                                 for name in self.names(5)})
        # A key or a directory whose mode was changed gets its mode back, not new bytes.
        (self.dir / "agency-2.key").chmod(0o600)
        self.dir.chmod(0o755)
        before = {n: v[:2] for n, v in self.snapshot().items()}
        said = self.lines(self.make())
        self.assertEqual(said["agency-2.key"], "kept; mode set to 0644 (was 0600)")
        self.assertEqual(said["/"], "mode set to 0700 (was 0755)")
        self.assertEqual({n: v[:2] for n, v in self.snapshot().items()}, before)
        self.assertEqual(stat.S_IMODE((self.dir / "agency-2.key").stat().st_mode), 0o644)
        self.assertEqual(stat.S_IMODE(self.dir.stat().st_mode), 0o700)

    def test_more_agencies_add_theirs_and_change_nothing_else(self):
        self.make()
        before = self.snapshot()
        result = self.make(agencies=7)
        after = self.snapshot()
        self.assertEqual(set(after), self.names(7))
        self.assertEqual({n: v for n, v in after.items() if n in before}, before)
        said = self.lines(result)
        made = {n for n, what in said.items() if not what.startswith("kept")}
        self.assertEqual(made, {"agency-6.key", "agency-6.pem", "agency-7.key", "agency-7.pem"},
                         result.stdout)
        for k in (6, 7):
            self.assert_verifies(f"agency-{k}", "sslclient")
        # Fewer agencies later: the others' files are left alone.
        self.make(agencies=2)
        self.assertEqual(self.snapshot(), after)

    def test_a_broken_expiring_foreign_or_wrong_leaf_is_issued_again_alone(self):
        self.make()
        other = self.tmp / "other"
        self.make(directory=other, agencies=3)
        d = self.dir
        # agency-1: not a certificate at all.
        (d / "agency-1.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
        # agency-2: its own key and names, signed by this CA, but for 10 days only.
        csr = openssl("req", "-new", "-key", str(d / "agency-2.key"), "-subj", "/CN=agency-2")
        subprocess.run(["openssl", "x509", "-req", "-CA", str(d / "ca.pem"), "-CAkey",
                        str(d / "ca.key"), "-days", "10", "-out", str(d / "agency-2.pem")],
                       input=csr.stdout, capture_output=True, text=True, check=True, timeout=60)
        # agency-3: a pair of another CA (the same names and extensions).
        for ext in ("pem", "key"):
            (d / f"agency-3.{ext}").write_bytes((other / f"agency-3.{ext}").read_bytes())
        # agency-4: agency-5's pair (a valid key, the certificate names agency-5).
        for ext in ("pem", "key"):
            (d / f"agency-4.{ext}").write_bytes((d / f"agency-5.{ext}").read_bytes())
        # server: its key cut short; its certificate then belongs to no key there.
        (d / "server.key").write_bytes((d / "server.key").read_bytes()[:60])
        before = self.snapshot()
        time.sleep(0.05)
        result = self.make()
        after = self.snapshot()
        said = self.lines(result)
        reissued = {"agency-1.pem", "agency-2.pem", "agency-3.pem", "agency-4.pem",
                    "server.key", "server.pem"}
        changed = {n for n in after if after[n][:2] != before[n][:2]}
        self.assertEqual(changed, reissued, result.stdout)
        self.assertEqual({n for n, what in said.items() if not what.startswith("kept")},
                         reissued, result.stdout)
        self.assertRegex(said["agency-1.pem"], r"^issued anew \(not a PEM certificate\)")
        self.assertRegex(said["agency-2.pem"], r"^issued anew \(expires within 30 days: ")
        self.assertRegex(said["agency-3.pem"], r"^issued anew \(does not verify against ca\.pem")
        self.assertRegex(said["agency-4.pem"], r"^issued anew \(wrong subject or extensions: "
                                               r"has \"subject CN=agency-5\"")
        self.assertEqual(said["server.key"], "made anew (not a PKCS#8 PEM private key)")
        self.assertRegex(said["server.pem"], r"^issued anew \(a new key\)")
        # The keys that were valid are kept (agency-3's foreign key and agency-4's copy
        # too: a valid key is not renewed; delete it to have it made anew).
        for k in (1, 2, 3, 4):
            self.assertEqual(said[f"agency-{k}.key"], "kept")
        self.assert_verifies("server", "sslserver")
        for k in range(1, 6):
            self.assert_verifies(f"agency-{k}", "sslclient")
            self.assertIn("DNS:agency-%d" % k, extensions(d / f"agency-{k}.pem")[
                "X509v3 Subject Alternative Name"][1])
        # A key and certificate that no longer match: the certificate is issued again.
        (d / "agency-5.key").write_bytes((d / "agency-1.key").read_bytes())
        said = self.lines(self.make())
        self.assertRegex(said["agency-5.pem"], r"^issued anew \(not the certificate of the key")

    def test_a_broken_ca_makes_everything_anew_and_says_so(self):
        self.make(agencies=2)
        before = self.snapshot()
        for broken in ("ca.pem", "ca.key"):
            with self.subTest(broken=broken):
                before = self.snapshot()
                (self.dir / broken).write_text("not a PEM file\n")
                result = self.make(agencies=2)
                after = self.snapshot()
                self.assertEqual(set(after), self.names(2))
                for name in after:
                    self.assertNotEqual(after[name][0], before[name][0], name)
                said = self.lines(result)
                self.assertRegex(said["ca.key"], rf"^made anew: a new CA \({broken}: "
                                                 r".*every key and certificate is made anew")
                self.assertEqual(said["agency-1.key"], "made anew (a new CA)")
                self.assert_verifies("server", "sslserver")
                self.assert_verifies("agency-2", "sslclient")
        # --force: the same, asked for.
        before = self.snapshot()
        said = self.lines(self.make("--force", agencies=2))
        self.assertRegex(said["ca.key"], r"^made anew: a new CA \(--force\)")
        self.assertFalse([n for n, v in self.snapshot().items() if v[0] == before[n][0]])

    def test_extensions_are_exactly_the_identity_rule(self):
        self.make(agencies=2)
        d = self.dir
        fields = certificate_fields(d / "ca.pem")
        self.assertEqual(fields["Version:"], "3 (0x2)")
        self.assertEqual(fields["Subject:"], fields["Issuer:"])
        ca = extensions(d / "ca.pem")
        self.assertEqual(set(ca), {"X509v3 Basic Constraints", "X509v3 Key Usage",
                                   "X509v3 Subject Key Identifier"}, ca)
        self.assertEqual(ca["X509v3 Basic Constraints"], (True, "CA:TRUE"))
        self.assertEqual(ca["X509v3 Key Usage"], (True, "Certificate Sign, CRL Sign"))
        self.assertFalse(ca["X509v3 Subject Key Identifier"][0])
        ca_key_id = ca["X509v3 Subject Key Identifier"][1]
        self.assertRegex(ca_key_id, KEY_ID)
        leaves = {"server": ("TLS Web Server Authentication",
                             "DNS:server, DNS:localhost, IP Address:127.0.0.1, "
                             "IP Address:0:0:0:0:0:0:0:1", "sslserver"),
                  "agency-1": ("TLS Web Client Authentication", "DNS:agency-1", "sslclient"),
                  "agency-2": ("TLS Web Client Authentication", "DNS:agency-2", "sslclient")}
        for name, (usage, names, purpose) in leaves.items():
            with self.subTest(certificate=name):
                cert = d / f"{name}.pem"
                fields = certificate_fields(cert)
                self.assertEqual(fields["Version:"], "3 (0x2)")
                self.assertEqual(fields["Signature Algorithm:"], "ecdsa-with-SHA256")
                self.assertEqual(fields["Public Key Algorithm:"], "id-ecPublicKey")
                self.assertEqual(fields["ASN1 OID:"], "prime256v1")
                self.assertEqual(fields["Subject:"], f"CN={name}")
                self.assertEqual(fields["Issuer:"], "CN=Loteria Nacional CA")
                found = extensions(cert)
                self.assertEqual(set(found), {
                    "X509v3 Basic Constraints", "X509v3 Key Usage",
                    "X509v3 Extended Key Usage", "X509v3 Subject Alternative Name",
                    "X509v3 Authority Key Identifier"}, found)
                self.assertEqual(found["X509v3 Basic Constraints"], (True, "CA:FALSE"))
                self.assertEqual(found["X509v3 Key Usage"], (True, "Digital Signature"))
                self.assertEqual(found["X509v3 Extended Key Usage"], (False, usage))
                self.assertEqual(found["X509v3 Subject Alternative Name"], (False, names))
                # keyid only (no issuer name and serial), the CA's own.
                self.assertEqual(found["X509v3 Authority Key Identifier"], (False, ca_key_id))
                self.assert_verifies(name, purpose)
                # The other purpose is refused: a client certificate cannot serve.
                other = "sslserver" if purpose == "sslclient" else "sslclient"
                refused = openssl("verify", "-no-CApath", "-no-CAstore", "-purpose", other,
                                  "-CAfile", str(d / "ca.pem"), str(cert), check=False)
                self.assertNotEqual(refused.returncode, 0, refused.stdout)
                # The key: PKCS#8 PEM, ECDSA P-256, the certificate's.
                key = d / f"{name}.key"
                self.assertEqual(key.read_text().splitlines()[0], "-----BEGIN PRIVATE KEY-----")
                self.assertIn("ASN1 OID: prime256v1",
                              openssl("pkey", "-in", str(key), "-noout", "-text").stdout)
                self.assertEqual(openssl("pkey", "-in", str(key), "-pubout").stdout,
                                 openssl("x509", "-in", str(cert), "-noout", "-pubkey").stdout)
                end = openssl("x509", "-in", str(cert), "-noout", "-checkend",
                              str(800 * 86400), check=False)
                self.assertEqual(end.returncode, 0, "valid for less than 800 days")

    def test_help_and_bad_arguments(self):
        result = self.make("--help", check=False)
        self.assertEqual(result.returncode, 0)
        self.assertIn("scripts/make-certs.sh [--brief] [--force] [--help]", result.stdout)
        self.assertIn("CERTS_AGENCIES", result.stdout)
        for bad in ("abc", "-1", "1001", "2x"):
            with self.subTest(agencies=bad):
                env = {**os.environ, "CERTS_DIR": str(self.dir), "CERTS_AGENCIES": bad}
                result = subprocess.run([ROOT / "scripts/make-certs.sh"], capture_output=True,
                                        text=True, env=env, timeout=60)
                self.assertEqual(result.returncode, 2, result)
                self.assertIn("CERTS_AGENCIES must be an integer in 0..1000", result.stderr)
        result = self.make("--bogus", check=False)
        self.assertEqual((result.returncode, result.stdout), (2, ""))
        self.assertFalse(self.dir.exists(), "a refused run made files")


# ----- compose_maker.py's TLS mounts -----

def compose_services(text: str) -> dict[str, dict]:
    """compose_maker.py's output, read back: {service: {"environment": {VAR: value},
    "mounts": [(source, target, read_only)]}} (bind mounts only). Its own format,
    indented by two spaces a level: a test of the generator, not a YAML parser."""
    services: dict[str, dict] = {}
    top = section = None
    mounts: list[dict] = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or line.startswith("#"):
            continue
        if indent == 0:
            top = line.rstrip(":")
        elif top != "services":
            continue
        elif indent == 2:
            name = line.strip().rstrip(":")
            services[name] = {"environment": {}, "mounts": []}
            mounts = []
            services[name]["_mounts"] = mounts
        elif indent == 4:
            section = line.strip().rstrip(":")
        elif section == "environment" and indent == 6:
            var, _, value = json.loads(line.strip()[2:]).partition("=")
            services[name]["environment"][var] = value
        elif section == "volumes" and indent == 6:
            mounts.append({})
            line = line.replace("- ", "  ", 1)
            indent = 8
        if section == "volumes" and indent == 8:
            key, _, value = line.strip().partition(": ")
            mounts[-1][key] = json.loads(value) if value.startswith('"') else value
    for service in services.values():
        service["mounts"] = [(m["source"], m["target"], m.get("read_only") == "true")
                             for m in service.pop("_mounts") if m["type"] == "bind"]
    return services


class ComposeMakerTlsTest(unittest.TestCase):
    """compose_maker.py: TLS on by default; the CA certificate in every container, the
    server's key in the server alone, agency K's key in clientK alone, read-only; the
    variables name the mounted files; --no-tls and --certs-dir; missing files warned."""

    def maker(self, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, dict], Path]:
        tmp = tempfile.TemporaryDirectory(prefix="loteria-compose-")
        self.addCleanup(tmp.cleanup)
        out = Path(tmp.name) / "sub" / "docker-compose.yaml"
        out.parent.mkdir()
        result = subprocess.run([sys.executable, ROOT / "compose_maker.py", *args, "-o",
                                 str(out)], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result)
        return result, compose_services(out.read_text()), out.parent

    def cert_mounts(self, service: dict, compose_dir: Path, certs: Path) -> dict[str, str]:
        """The service's mounts of files of `certs`: {file name: target}, each checked
        read-only."""
        found = {}
        for source, target, read_only in service["mounts"]:
            path = (compose_dir / source).resolve()
            if path.parent == certs.resolve():
                self.assertTrue(read_only, f"{source} is mounted writable")
                found[path.name] = target
        return found

    def test_each_container_gets_the_ca_and_its_own_key_only(self):
        result, services, where = self.maker("3")
        self.assertIn("server + 3 client(s), mutual TLS", result.stdout)
        self.assertEqual(set(services), {"server", "client1", "client2", "client3"})
        certs = ROOT / "certs"
        server = services["server"]
        self.assertEqual(self.cert_mounts(server, where, certs), {
            "ca.pem": "/app/certs/ca.pem", "server.pem": "/app/certs/server.pem",
            "server.key": "/app/certs/server.key"})
        env = server["environment"]
        self.assertEqual({k: v for k, v in env.items() if k.startswith("SERVER_TLS_")}, {
            "SERVER_TLS_CA": "/app/certs/ca.pem", "SERVER_TLS_CERT": "/app/certs/server.pem",
            "SERVER_TLS_KEY": "/app/certs/server.key", "SERVER_TLS_REQUIRED": "true"})
        for k in (1, 2, 3):
            with self.subTest(client=k):
                client = services[f"client{k}"]
                self.assertEqual(self.cert_mounts(client, where, certs), {
                    "ca.pem": "/app/certs/ca.pem",
                    f"agency-{k}.pem": f"/app/certs/agency-{k}.pem",
                    f"agency-{k}.key": f"/app/certs/agency-{k}.key"})
                self.assertEqual({n: v for n, v in client["environment"].items()
                                  if "TLS" in n}, {
                    "CLI_TLS_CA": "/app/certs/ca.pem",
                    "CLI_TLS_CERT": f"/app/certs/agency-{k}.pem",
                    "CLI_TLS_KEY": f"/app/certs/agency-{k}.key"})
                self.assertEqual(client["environment"]["CLI_ID"], str(k))
        # No key but its own anywhere, the CA's nowhere.
        for name, service in services.items():
            keys = [t for _, t, _ in service["mounts"] if t.endswith(".key")]
            own = "server.key" if name == "server" else f"agency-{name[len('client'):]}.key"
            self.assertEqual(keys, [f"/app/certs/{own}"], name)

    def test_zero_is_the_server_alone_with_tls(self):
        result, services, where = self.maker("0")
        self.assertEqual(set(services), {"server"})
        self.assertEqual(set(self.cert_mounts(services["server"], where, ROOT / "certs")),
                         {"ca.pem", "server.pem", "server.key"})
        self.assertEqual(services["server"]["environment"]["SERVER_TLS_REQUIRED"], "true")

    def test_no_tls_and_another_certs_dir(self):
        result, services, _ = self.maker("2", "--no-tls")
        self.assertIn("(no TLS)", result.stdout)
        for name, service in services.items():
            self.assertFalse([t for _, t, _ in service["mounts"] if "/certs/" in t], name)
            self.assertFalse([v for v in service["environment"] if "TLS" in v], name)
        with tempfile.TemporaryDirectory(prefix="loteria-other-certs-") as other:
            result, services, where = self.maker("1", "--certs-dir", other)
            # Nothing there: a warning naming the files and the command.
            self.assertIn(f"compose_maker.py: warning: {other} has no ca.pem, server.pem, "
                          "server.key and 2 more; make them with `make certs "
                          f"CERTS_DIR={other}`", result.stderr)
            self.assertEqual(set(self.cert_mounts(services["client1"], where, Path(other))),
                             {"ca.pem", "agency-1.pem", "agency-1.key"})

    def test_committed_compose_file_mounts_certs_of_the_checkout(self):
        services = compose_services((ROOT / "docker-compose.yaml").read_text())
        self.assertEqual(len(services), 6)
        for k in range(1, 6):
            self.assertIn(("./certs/agency-%d.key" % k, f"/app/certs/agency-{k}.key", True),
                          services[f"client{k}"]["mounts"])
        self.assertIn(("./certs/server.key", "/app/certs/server.key", True),
                      services["server"]["mounts"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
