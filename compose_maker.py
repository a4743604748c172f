#!/usr/bin/env python3
"""Writes the Docker Compose file for a lottery with n agencies.

    python3 compose_maker.py [n] [-o FILE|-] [--data-dir DIR] [--config-dir DIR]
                             [--certs-dir DIR | --no-tls]

n (default 1) is the number of agencies. The file (default `docker-compose.yaml`)
holds one `server` container and containers `client1` … `clientN` on the private
bridge network `lottery` (internal: nothing outside it is reachable, no port is
published on it). The server is told to wait for n agencies (`SERVER_AGENCIES`) and
keeps its bets file on the named volume `bets-data`, so stored bets outlive the
container. n = 0 writes the server alone (what the echo check `nc_test.sh` needs): it
then gets no `SERVER_AGENCIES`, so `lottery.agencies` of the configuration applies
(the server needs at least one agency to wait for), and agencies can be run against
it by hand. The server also serves its status page (`SERVER_STATUS_PORT=8080`: `/`
live page, `/metrics` Prometheus text), published on the host's loopback only, at
127.0.0.1:${LOTERIA_STATUS_PORT:-8080}; an internal network cannot publish a port, so
for that the server alone is also on a second, ordinary bridge network `status`. Every
container bind-mounts the configuration directory (`config/`) read-only, so an edited
`server.toml` / `client.toml` takes effect on the next container start without
rebuilding an image; `clientK` also gets `DATA_DIR/agency-K.csv`, read-only (a
missing one is warned about here, and Docker refuses to start that client).

Mutual TLS is on (the files come from `make certs`, in CERTS_DIR, default `certs/`
next to this script): every container bind-mounts `ca.pem` read-only at
/app/certs/ca.pem; the server alone also `server.pem` and `server.key`, and `clientK`
alone `agency-K.pem` and `agency-K.key` (read-only, at /app/certs/ under the same
names), so no container holds another's key, and the CA key is never mounted. The
server gets `SERVER_TLS_CA`, `SERVER_TLS_CERT`, `SERVER_TLS_KEY` and
`SERVER_TLS_REQUIRED=true` (an agency without a certificate of this CA naming it,
`DNS:agency-K`, is refused), each client `CLI_TLS_CA`, `CLI_TLS_CERT`, `CLI_TLS_KEY`.
n = 0 keeps TLS on (the plain-text and `ECHO` check of `nc_test.sh` is answered
without TLS by design). A missing certificate file is warned about here (Docker then
refuses to start that container). `--no-tls` writes the plaintext deployment (no
certificates, no TLS variables).

Paths on the command line are taken relative to the current directory and written
relative to the compose file (Compose resolves them from the file's directory).
DATA_DIR defaults to `agencies/` and the configuration to `config/`, both next to
this script. The committed `docker-compose.yaml` is this script's output for n = 5.

Exit codes: 0 written, 2 bad arguments (n not an integer in 0..=1000, …), 1 the file
could not be written. Standard library only.
"""

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SERVER_IMAGE = "loteria-server:latest"
CLIENT_IMAGE = "loteria-client:latest"
# Where the images expect their files (WORKDIR /app, see the Dockerfiles).
APP = "/app"
DEFAULT_DATA_DIR = str(ROOT / "agencies")
DEFAULT_CONFIG_DIR = str(ROOT / "config")
DEFAULT_CERTS_DIR = str(ROOT / "certs")
# Where the containers find their certificates and keys.
CERTS = f"{APP}/certs"
# Every container joins one bridge network, and a Linux bridge holds at most 1024
# interfaces: more agencies than this cannot run from one compose file anyway.
MAX_AGENCIES = 1000
# The server's status page: its port in the container, and the variable that picks the
# port on the host's loopback when Compose runs the file.
STATUS_PORT = 8080
STATUS_HOST_PORT = "${LOTERIA_STATUS_PORT:-8080}"


def agency_count(text: str) -> int:
    """argparse type for n: a decimal integer in 0..=MAX_AGENCIES, nothing else."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(
            f"n must be a non-negative integer (0, 1, 2, …), got {text!r}")
    if len(value) > 6 or int(value) > MAX_AGENCIES:
        raise argparse.ArgumentTypeError(
            f"n must be at most {MAX_AGENCIES} (one Docker bridge network holds "
            f"at most 1024 containers), got {text!r}")
    return int(value)


def quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def mount_source(path: Path, compose_dir: Path) -> str:
    """A bind-mount source as Compose wants it: relative to the compose file and
    starting with `./` or `../` (a bare name would be a named volume), or absolute
    when no relative path exists."""
    try:
        relative = os.path.relpath(path, compose_dir)
    except ValueError:  # another drive on Windows
        return str(path)
    if relative == ".":
        return "."
    return relative if relative.startswith("..") else "./" + relative


def literal_path(path: str) -> str:
    """A path as a YAML scalar that Compose takes literally (`$` would start a
    variable: `$$` is a plain dollar sign)."""
    return quote(path.replace("$", "$$"))


# A mount: (type, source, target in the container, read-only). The long syntax needs
# no escaping of `:` in paths, and a bind mount of a missing file is an error instead
# of an empty directory created on the host.
Mount = tuple[str, str, str, bool]


def service_lines(name: str, image: str, dockerfile: str, context: str,
                  environment: list[str], mounts: list[Mount],
                  depends_on: list[str], networks: list[str],
                  ports: list[str]) -> list[str]:
    """One service: fixed container name, its image (and how to build it), its
    environment, mounts, networks and published ports."""
    lines = [
        f"  {name}:",
        f"    container_name: {name}",
        f"    image: {image}",
        "    build:",
        f"      context: {literal_path(context)}",
        f"      dockerfile: {dockerfile}",
    ]
    if environment:
        lines.append("    environment:")
        lines += [f"      - {quote(item)}" for item in environment]
    lines.append("    volumes:")
    for kind, source, target, read_only in mounts:
        lines += [f"      - type: {kind}",
                  f"        source: {literal_path(source)}",
                  f"        target: {target}"]
        if read_only:
            lines.append("        read_only: true")
    lines.append("    networks:")
    lines += [f"      - {item}" for item in networks]
    if ports:
        lines.append("    ports:")
        lines += [f"      - {quote(item)}" for item in ports]
    if depends_on:
        lines.append("    depends_on:")
        lines += [f"      - {item}" for item in depends_on]
    return lines


def tls_files(n: int) -> list[str]:
    """The files of CERTS_DIR a lottery of n agencies mounts."""
    return (["ca.pem", "server.pem", "server.key"]
            + [f"agency-{k}.{ext}" for k in range(1, n + 1) for ext in ("pem", "key")])


def tls_setup(prefix: str, certs_dir: Path | None, compose_dir: Path,
              name: str) -> tuple[list[str], list[Mount]]:
    """The TLS variables (`prefix`: SERVER or CLI) and read-only mounts of a container
    whose certificate and key are `name`.pem / `name`.key: the CA certificate, its own
    certificate and key. None and none without TLS (`certs_dir` None)."""
    if certs_dir is None:
        return [], []
    files = {"CA": "ca.pem", "CERT": f"{name}.pem", "KEY": f"{name}.key"}
    environment = [f"{prefix}_TLS_{var}={CERTS}/{file}" for var, file in files.items()]
    mounts: list[Mount] = [("bind", mount_source(certs_dir / file, compose_dir),
                            f"{CERTS}/{file}", True) for file in files.values()]
    return environment, mounts


def render(n: int, compose_dir: Path, data_dir: Path, config_dir: Path,
           certs_dir: Path | None, options: str) -> str:
    """The compose file's text for n agencies, with mutual TLS unless `certs_dir` is
    None; `options` are the generator's options besides n and -o, for the header."""
    context = mount_source(ROOT, compose_dir)
    config: Mount = ("bind", mount_source(config_dir, compose_dir), f"{APP}/config", True)
    lines = [
        f"# The lottery with {n} agenc{'y' if n == 1 else 'ies'}, written by "
        f"`python3 compose_maker.py {n}{options}`: regenerate it, do not edit it.",
    ]
    if n == 0:
        lines.append("# No agencies: the server waits for config/server.toml's "
                     "lottery.agencies.")
    if certs_dir is None:
        lines.append("# No TLS (--no-tls): agencies connect in plaintext.")
    else:
        lines.append("# Mutual TLS with the certificates of `make certs`: each container "
                     "mounts the CA's certificate and its own key and certificate only.")
    lines.append("services:")
    # n = 0: no SERVER_AGENCIES, the configuration's lottery.agencies applies.
    agencies = [f"SERVER_AGENCIES={n}"] if n > 0 else []
    tls_environment, tls_mounts = tls_setup("SERVER", certs_dir, compose_dir, "server")
    if certs_dir is not None:
        tls_environment.append("SERVER_TLS_REQUIRED=true")
    lines += service_lines(
        "server", SERVER_IMAGE, "Dockerfile.server", context,
        environment=agencies + [f"SERVER_STATUS_PORT={STATUS_PORT}"] + tls_environment,
        mounts=[config, ("volume", "bets-data", f"{APP}/data", False)] + tls_mounts,
        depends_on=[], networks=["lottery", "status"],
        ports=[f"127.0.0.1:{STATUS_HOST_PORT}:{STATUS_PORT}"])
    for k in range(1, n + 1):
        data = mount_source(data_dir / f"agency-{k}.csv", compose_dir)
        tls_environment, tls_mounts = tls_setup("CLI", certs_dir, compose_dir, f"agency-{k}")
        lines.append("")
        lines += service_lines(
            f"client{k}", CLIENT_IMAGE, "Dockerfile.client", context,
            environment=[f"CLI_ID={k}"] + tls_environment,
            mounts=[config, ("bind", data, f"{APP}/agencies/agency-{k}.csv", True)]
            + tls_mounts,
            depends_on=["server"], networks=["lottery"], ports=[])
    lines += [
        "",
        "networks:",
        "  lottery:",
        "    driver: bridge",
        "    internal: true  # no route out of it: the agencies are on it alone; the "
        "server is also on status",
        "  status:",
        "    driver: bridge  # the server's alone (it is on both): an ordinary bridge, "
        "to publish its status page on the host's loopback",
        "",
        "volumes:",
        "  bets-data:",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="compose_maker.py",
        description="Write the Docker Compose file for a lottery with n agencies.")
    parser.add_argument("n", nargs="?", type=agency_count, default=1,
                        help="number of agencies (default 1; 0: the server alone)")
    parser.add_argument("-o", "--output", default="docker-compose.yaml",
                        help="file to write (default docker-compose.yaml; - for "
                             "standard output, paths relative to the current directory)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="directory of agency-K.csv files (default agencies/)")
    parser.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR,
                        help="directory with server.toml and client.toml (default config/)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--certs-dir", default=DEFAULT_CERTS_DIR,
                     help="directory of `make certs`'s ca.pem, server.pem/.key and "
                          "agency-K.pem/.key (default certs/)")
    tls.add_argument("--no-tls", action="store_true",
                     help="no TLS: no certificates mounted, agencies connect in plaintext")
    args = parser.parse_args(argv)

    output = Path(args.output).absolute()
    data_dir = Path(args.data_dir).absolute()
    config_dir = Path(args.config_dir).absolute()
    certs_dir = None if args.no_tls else Path(args.certs_dir).absolute()
    for name in ("server.toml", "client.toml"):
        if not (config_dir / name).is_file():
            parser.error(f"--config-dir {args.config_dir}: no {name} there")
    missing = [k for k in range(1, args.n + 1)
               if not (data_dir / f"agency-{k}.csv").is_file()]
    if missing:
        shown = ", ".join(f"agency-{k}.csv" for k in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        print(f"compose_maker.py: warning: {args.data_dir} has no {shown}{more}; "
              f"generate a data set with `python3 scripts/gen_agencies.py "
              f"--agencies {args.n} -o DIR` and pass --data-dir DIR", file=sys.stderr)
    if certs_dir is not None:
        absent = [name for name in tls_files(args.n) if not (certs_dir / name).is_file()]
        if absent:
            shown = ", ".join(absent[:3])
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            how = ("make certs" if args.n <= 5 else f"make certs CERTS_AGENCIES={args.n}")
            if args.certs_dir != DEFAULT_CERTS_DIR:
                how += f" CERTS_DIR={shlex.quote(args.certs_dir)}"
            print(f"compose_maker.py: warning: {args.certs_dir} has no {shown}{more}; "
                  f"make them with `{how}` (or write a plaintext lottery with --no-tls)",
                  file=sys.stderr)

    to_stdout = args.output == "-"
    compose_dir = Path.cwd() if to_stdout else output.parent
    options = "".join(f" {flag} {shlex.quote(value)}" for flag, value, default in [
        ("--data-dir", args.data_dir, DEFAULT_DATA_DIR),
        ("--config-dir", args.config_dir, DEFAULT_CONFIG_DIR),
        ("--certs-dir", args.certs_dir, DEFAULT_CERTS_DIR)] if value != default)
    if args.no_tls:
        options += " --no-tls"
    text = render(args.n, compose_dir, data_dir, config_dir, certs_dir, options)
    if to_stdout:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"compose_maker.py: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        return 1
    if args.n == 0:
        print(f"{args.output}: the server alone (it waits for the configuration's "
              f"lottery.agencies){'' if certs_dir is None else ', mutual TLS'}")
    else:
        print(f"{args.output}: server + {args.n} client(s)"
              f"{' (no TLS)' if certs_dir is None else ', mutual TLS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
