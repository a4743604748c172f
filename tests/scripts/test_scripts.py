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


if __name__ == "__main__":
    unittest.main(verbosity=2)
