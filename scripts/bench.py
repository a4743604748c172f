#!/usr/bin/env python3
"""End-to-end benchmark of the real `server` and `client` binaries on loopback.

    python3 scripts/bench.py [--agencies N] [--bets M] [--batch B] [--window W]
                             [--tls off|on|both] [--runs R] [--dataset DIR]
                             [--json FILE] [--bench-dir DIR]
                             [--profile release|debug] [--bin-dir DIR]

`make bench` runs it (docs/BENCHMARKS.md defines every figure). It builds the binaries
(`cargo build --release --locked`; --bin-dir uses binaries already built instead),
generates N agency files of M bets with scripts/gen_agencies.py into
BENCH_DIR/data-NxM/ (kept there: the same N and M are not generated again), or takes
DIR/agency-1.csv … agency-K.csv with --dataset, and for each TLS mode and run:

* starts the server on 127.0.0.1 with SERVER_PORT=0 (the port it logs in
  `action: listen | result: success | address: …`), its storage in a fresh directory
  (fsync on, as always), then every client at once;
* the wall time from the first client's start to the last client's exit, hence bets/s;
* each client's exit code and the winners it logged (`action: ganadores`), against the
  winners the agency files hold (bets with the winning number): any difference, a
  failed client, a server that did not draw over every bet or did not stop cleanly
  makes the run INVALID, and it gives no figures;
* the ACK latency each client logs on its last upload line (`ack_p50_us`,
  `ack_p99_us`: the median over the clients; n/a when the client does not log them);
* the draw time the server logs (`action: sorteo | … | elapsed: Nms`);
* the peak RSS of the server and of the clients (wait4's ru_maxrss: exact);
* the disk's own limit, right after the run, in the storage's directory: the bytes
  the storage wrote (its files' sizes), written in 1 MiB writes (a) with one fdatasync
  at the end and (b) with an fdatasync after every 1 MiB; (b) is the "durable" limit
  the end-to-end rate is compared with.

Prints a table (median over the runs, and each run); --json FILE writes every figure.
Exit code 0 when every run was valid, 1 otherwise, 2 for bad arguments.
Python 3.11 or later, standard library only; Linux (wait4, /proc).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINNING_NUMBER = 7574
MIB = 1 << 20
# A run that takes longer than this is stopped and INVALID.
RUN_TIMEOUT_S = 1800


# ----- parsing the programs' log lines -----

def fields(line: str) -> dict[str, str]:
    """The `key: value` fields of a log line (`<date> <time> LEVEL action: … | k: v | …`);
    empty when the line has no `action:` field."""
    at = line.find("action: ")
    if at < 0:
        return {}
    out = {}
    for part in line[at:].rstrip("\r\n").split(" | "):
        key, sep, value = part.partition(": ")
        if sep:
            out[key.strip()] = value
    return out


def parse_listen(line: str) -> tuple[str, int] | None:
    """(host, port) of the server's `action: listen | result: success | address: H:P`."""
    f = fields(line)
    if f.get("action") != "listen" or f.get("result") != "success" or "address" not in f:
        return None
    host, sep, port = f["address"].rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.split()[0])
    except (ValueError, IndexError):
        return None


def parse_upload(line: str) -> dict | None:
    """The client's last upload line (`action: upload | result: success | …`):
    bets_sent, batches, and window, ack_p50_us, ack_p99_us (None where absent)."""
    f = fields(line)
    if f.get("action") != "upload" or f.get("result") != "success":
        return None
    return {
        "bets_sent": _int_or_none(f.get("bets_sent")),
        "batches": _int_or_none(f.get("batches")),
        "window": _int_or_none(f.get("window")),
        "ack_p50_us": _int_or_none(f.get("ack_p50_us")),
        "ack_p99_us": _int_or_none(f.get("ack_p99_us")),
    }


def parse_draw(line: str) -> dict | None:
    """The server's `action: sorteo | result: success | bets: N | … | elapsed: Nms`."""
    f = fields(line)
    if f.get("action") != "sorteo" or f.get("result") != "success":
        return None
    elapsed = f.get("elapsed", "")
    ms = _int_or_none(elapsed[:-2]) if elapsed.endswith("ms") else None
    return {"bets": _int_or_none(f.get("bets")), "winners": _int_or_none(f.get("winners")),
            "elapsed_ms": ms}


def parse_winners(line: str) -> list[str] | None:
    """The documents of `action: ganadores | result: success | … | dnis: a,b,…`."""
    f = fields(line)
    if f.get("action") != "ganadores" or f.get("result") != "success":
        return None
    dnis = f.get("dnis", "")
    return [d for d in dnis.split(",") if d]


def median(values):
    """The median of the values that are not None (None when there are none)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


# ----- data -----

def agency_files(directory: Path) -> list[Path]:
    """agency-1.csv … agency-K.csv of `directory` (K: the first missing one stops)."""
    files = []
    while (directory / f"agency-{len(files) + 1}.csv").is_file():
        files.append(directory / f"agency-{len(files) + 1}.csv")
    return files


def expected_winners(files: list[Path], winning: int) -> tuple[list[list[str]], int]:
    """Per agency the sorted documents of its bets with the winning number, and the
    number of bets in all (one per non-empty line)."""
    per_agency, total = [], 0
    for path in files:
        docs = []
        with path.open("rb") as f:
            for raw in f:
                line = raw.rstrip(b"\r\n")
                if not line:
                    continue
                total += 1
                parts = line.rsplit(b",", 2)
                if len(parts) == 3 and parts[2].strip().isdigit() and int(parts[2]) == winning:
                    docs.append(line.split(b",")[-3].decode())
        per_agency.append(sorted(docs))
    return per_agency, total


def prepare_data(args) -> tuple[Path, list[Path], list[list[str]], int]:
    """The agency files (generated once per (agencies, bets) in the bench dir, or the
    dataset's), the winners they hold and their number of bets."""
    if args.dataset:
        directory = Path(args.dataset)
        files = agency_files(directory)
        if not files:
            sys.exit(f"bench: no agency-1.csv in {directory}")
        winners, total = expected_winners(files, WINNING_NUMBER)
        return directory, files, winners, total
    directory = Path(args.bench_dir) / f"data-{args.agencies}x{args.bets}"
    summary = directory / "expected.json"
    if summary.is_file():
        cached = json.loads(summary.read_text())
        files = agency_files(directory)
        if len(files) == args.agencies:
            return directory, files, cached["winners"], cached["bets"]
    shutil.rmtree(directory, ignore_errors=True)
    print(f"bench: generating {args.agencies} x {args.bets} bets into {directory} "
          "(once; kept for the next runs)", flush=True)
    started = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "scripts/gen_agencies.py"),
                    "--agencies", str(args.agencies), "--bets", str(args.bets),
                    "--winning-number", str(WINNING_NUMBER), "-o", str(directory)],
                   check=True, stdout=subprocess.DEVNULL)
    files = agency_files(directory)
    winners, total = expected_winners(files, WINNING_NUMBER)
    # What the generator promises (winners_for) must be what the files hold.
    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_agencies import winners_for  # noqa: E402 (the generator's own rule)
    for k, docs in enumerate(winners, 1):
        want = 0 if args.agencies >= 5 and k == args.agencies else winners_for(k, 2)
        if len(docs) != min(want, args.bets):
            sys.exit(f"bench: agency {k} holds {len(docs)} winners, the generator "
                     f"promises {min(want, args.bets)}")
    summary.write_text(json.dumps({"winners": winners, "bets": total}))
    print(f"bench: generated in {time.monotonic() - started:.1f} s", flush=True)
    return directory, files, winners, total


def prepare_certs(bench_dir: Path, agencies: int) -> Path:
    certs = bench_dir / "certs"
    subprocess.run([str(ROOT / "scripts/make-certs.sh"), "--brief"], check=True,
                   env={**os.environ, "CERTS_DIR": str(certs),
                        "CERTS_AGENCIES": str(agencies)}, stdout=subprocess.DEVNULL)
    return certs


def binaries(args) -> Path:
    if args.bin_dir:
        return Path(args.bin_dir)
    profile = ["--release"] if args.profile == "release" else []
    subprocess.run(["cargo", "build", *profile, "--locked", "--quiet",
                    "--bin", "server", "--bin", "client"], cwd=ROOT, check=True)
    meta = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    return Path(json.loads(meta.stdout)["target_directory"]) / args.profile


# ----- the disk's own limit -----

def disk_limit(directory: Path, nbytes: int) -> dict:
    """Seconds and MB/s to write `nbytes` in 1 MiB writes into a new file of
    `directory`: (a) one fdatasync at the end, (b) one after every 1 MiB write."""
    block = os.urandom(MIB)
    out = {}
    for name, every in (("end", False), ("every_mib", True)):
        path = directory / f"disk-limit-{name}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            started = time.monotonic()
            left = nbytes
            while left > 0:
                n = min(left, MIB)
                os.write(fd, block[:n])
                left -= n
                if every:
                    os.fdatasync(fd)
            if not every:
                os.fdatasync(fd)
            seconds = time.monotonic() - started
        finally:
            os.close(fd)
            path.unlink()
        out[name] = {"seconds": seconds, "mb_per_s": nbytes / 1e6 / seconds if seconds else None}
    return out


# ----- one run -----

def wait_listen(server: subprocess.Popen, log: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) before listening:\n"
                               + log.read_text(errors="replace")[-2000:])
        for line in log.read_text(errors="replace").splitlines():
            found = parse_listen(line)
            if found:
                return found[1]
        time.sleep(0.01)
    raise RuntimeError("the server logged no listen line in 30 s")


def gnu_time() -> str | None:
    """GNU time, which reports its child's peak RSS (`%M`), or None."""
    path = shutil.which("time", path="/usr/bin:/bin")
    if not path:
        return None
    probe = subprocess.run([path, "--version"], capture_output=True, text=True)
    return path if "GNU" in probe.stdout + probe.stderr else None


def vm_hwm(pid: int) -> int | None:
    """The peak RSS so far (VmHWM) of a running process, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reap(proc: subprocess.Popen) -> tuple[int, int]:
    """Waits for `proc` with wait4: (exit code, ru_maxrss in bytes). A child's
    ru_maxrss also counts the memory of the process it was forked from at its exec
    (here this Python): the clients are measured through GNU time instead."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024


def time_rss(path: Path) -> int | None:
    """The peak RSS GNU time wrote to `path` (`maxrss_kib: N`), in bytes."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("maxrss_kib: "):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_once(args, bins: Path, files: list[Path], winners: list[list[str]], total: int,
             tls: bool, certs: Path | None, index: int) -> dict:
    run_dir = Path(args.bench_dir) / "runs" / f"{'tls' if tls else 'plain'}-{index}"
    shutil.rmtree(run_dir, ignore_errors=True)
    storage = run_dir / "storage"
    storage.mkdir(parents=True)
    n = len(files)
    server_env = {
        **os.environ, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0",
        "SERVER_AGENCIES": str(n), "SERVER_STORAGE": str(storage / "bets.csv"),
        "SERVER_WINNING_NUMBER": str(WINNING_NUMBER), "SERVER_STATUS_PORT": "0",
        "SERVER_MAX_CONNECTIONS": str(max(512, n + 16)),
        "SERVER_LISTEN_BACKLOG": str(max(128, n)), "LOGGING_LEVEL": "INFO",
    }
    if tls:
        server_env |= {"SERVER_TLS_CA": str(certs / "ca.pem"),
                       "SERVER_TLS_CERT": str(certs / "server.pem"),
                       "SERVER_TLS_KEY": str(certs / "server.key"),
                       "SERVER_TLS_REQUIRED": "true"}
    server_log = run_dir / "server.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen([str(bins / "server"), "--config",
                                   str(ROOT / "config/server.toml")],
                                  env=server_env, stdout=out, stderr=subprocess.STDOUT)
    problems = []
    clients = []
    try:
        port = wait_listen(server, server_log)
        host = "localhost" if tls else "127.0.0.1"
        envs = []
        for k, path in enumerate(files, 1):
            env = {**os.environ, "CLI_ID": str(k), "CLI_MODE": "bets", "CLI_DATA": str(path),
                   "CLI_SERVER_ADDRESS": f"{host}:{port}", "CLI_LOG_LEVEL": "INFO"}
            if args.batch is not None:
                env["CLI_BATCH_MAX_AMOUNT"] = str(args.batch)
            if args.window is not None:
                env["CLI_BATCH_WINDOW"] = str(args.window)
            if tls:
                env |= {"CLI_TLS_CA": str(certs / "ca.pem"),
                        "CLI_TLS_CERT": str(certs / f"agency-{k}.pem"),
                        "CLI_TLS_KEY": str(certs / f"agency-{k}.key")}
            envs.append(env)
        logs = [open(run_dir / f"client-{k}.log", "wb") for k in range(1, n + 1)]
        command = [str(bins / "client"), "--config", str(ROOT / "config/client.toml")]
        timer = gnu_time()
        started = time.monotonic()
        for k, (env, out) in enumerate(zip(envs, logs), 1):
            wrap = [timer, "-f", "maxrss_kib: %M", "-o", str(run_dir / f"client-{k}.rss")] \
                if timer else []
            clients.append(subprocess.Popen(wrap + command, env=env, stdout=out,
                                            stderr=subprocess.STDOUT))
        spawned = time.monotonic() - started
        for out in logs:
            out.close()
        timed_out = threading.Event()

        def stop_all():
            timed_out.set()
            for proc in [*clients, server]:
                # Not Popen.kill: its poll() could reap a child wait4 is waiting for
                # (an unreaped child's pid is not reused).
                if proc.returncode is None:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        watchdog = threading.Timer(RUN_TIMEOUT_S, stop_all)
        watchdog.start()
        codes, rss = [], []
        for k, client in enumerate(clients, 1):
            code, peak = reap(client)
            codes.append(code)
            rss.append(time_rss(run_dir / f"client-{k}.rss") if timer else peak)
        wall = time.monotonic() - started
        # The server's peak so far, read while it runs (after the draw): its
        # ru_maxrss would count this Python's memory too.
        server_rss = vm_hwm(server.pid)
        watchdog.cancel()
        if timed_out.is_set():
            problems.append(f"stopped after {RUN_TIMEOUT_S} s")
    except BaseException:
        for proc in [*clients, server]:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        raise
    server.send_signal(signal.SIGTERM)
    server_code, _ = reap(server)

    acks = []
    for k in range(1, n + 1):
        got_winners, upload = None, None
        for line in (run_dir / f"client-{k}.log").read_text(errors="replace").splitlines():
            upload = parse_upload(line) or upload
            found = parse_winners(line)
            if found is not None:
                got_winners = found
        if codes[k - 1] != 0:
            problems.append(f"client {k} exited with {codes[k - 1]}")
        if got_winners is None:
            problems.append(f"client {k} logged no winners")
        elif sorted(got_winners) != winners[k - 1]:
            problems.append(f"client {k}: winners {len(got_winners)} {sorted(got_winners)[:5]}, "
                            f"expected {len(winners[k - 1])} {winners[k - 1][:5]}")
        acks.append(upload)
    draw = None
    for line in server_log.read_text(errors="replace").splitlines():
        draw = parse_draw(line) or draw
    if draw is None:
        problems.append("the server logged no draw")
    elif draw["bets"] != total:
        problems.append(f"the server drew over {draw['bets']} bets, the files hold {total}")
    if server_code != 0:
        problems.append(f"the server exited with {server_code} on SIGTERM")

    stored = sum(p.stat().st_size for p in storage.iterdir() if p.is_file())
    disk = disk_limit(run_dir, stored) if stored else None
    shutil.rmtree(storage, ignore_errors=True)
    result = {
        "tls": tls, "run": index, "valid": not problems, "problems": problems,
        "agencies": n, "bets": total, "logs": str(run_dir),
        "server_rss_bytes": server_rss, "client_rss_bytes": rss[0] if rss else None,
        "client_rss_max_bytes": max((r for r in rss if r is not None), default=None),
        "client_rss_source": "GNU time %M" if timer else "wait4 ru_maxrss (an upper bound: "
                             "it counts the launching Python's memory)",
    }
    if problems:
        return result
    bets_per_s = total / wall
    bytes_per_bet = stored / total if total else None
    p50s = [a["ack_p50_us"] for a in acks if a]
    p99s = [a["ack_p99_us"] for a in acks if a]
    windows = {a["window"] for a in acks if a and a["window"] is not None}
    result |= {
        "wall_s": wall, "spawn_s": spawned, "bets_per_s": bets_per_s, "stored_bytes": stored,
        "bytes_per_bet": bytes_per_bet,
        "batches": sum(a["batches"] or 0 for a in acks if a),
        "window": sorted(windows),
        "ack_p50_us": median(p50s), "ack_p99_us": median(p99s),
        "ack_p99_us_max": max((v for v in p99s if v is not None), default=None),
        "draw_ms": draw["elapsed_ms"], "winners": draw["winners"],
    }
    if disk:
        for name, figures in disk.items():
            mbps = figures["mb_per_s"]
            result[f"disk_{name}_s"] = figures["seconds"]
            result[f"disk_{name}_mb_per_s"] = mbps
            implied = mbps * 1e6 / bytes_per_bet if mbps and bytes_per_bet else None
            result[f"disk_{name}_bets_per_s"] = implied
            result[f"ratio_to_disk_{name}"] = bets_per_s / implied if implied else None
        result["e2e_mb_per_s"] = stored / 1e6 / wall
    return result


# ----- the report -----

def fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    match kind:
        case "rate":
            return f"{value / 1e6:.3f} M" if value >= 1e6 else f"{value:,.0f}"
        case "s":
            return f"{value:.3f} s"
        case "ms":
            return f"{value} ms"
        case "us":
            return f"{value:,.0f} µs"
        case "mb":
            return f"{value / 1e6:.1f} MB"
        case "mbps":
            return f"{value:.1f} MB/s"
        case "ratio":
            return f"{value:.2f}"
        case "bytes":
            return f"{value:.1f} B"
    return str(value)


ROWS = [
    ("end-to-end bets/s", "bets_per_s", "rate"),
    ("wall (clients' start → last exit)", "wall_s", "s"),
    ("  of it starting every client", "spawn_s", "s"),
    ("ACK p50 (median over clients)", "ack_p50_us", "us"),
    ("ACK p99 (median over clients)", "ack_p99_us", "us"),
    ("draw (server's sorteo elapsed)", "draw_ms", "ms"),
    ("server peak RSS", "server_rss_bytes", "mb"),
    ("client 1 peak RSS", "client_rss_bytes", "mb"),
    ("largest client peak RSS", "client_rss_max_bytes", "mb"),
    ("stored bytes per bet", "bytes_per_bet", "bytes"),
    ("end-to-end storage MB/s", "e2e_mb_per_s", "mbps"),
    ("disk (a) 1 fdatasync at end", "disk_end_mb_per_s", "mbps"),
    ("disk (b) fdatasync / MiB (durable)", "disk_every_mib_mb_per_s", "mbps"),
    ("disk (b) as bets/s", "disk_every_mib_bets_per_s", "rate"),
    ("end-to-end / disk (b)", "ratio_to_disk_every_mib", "ratio"),
    ("end-to-end / disk (a)", "ratio_to_disk_end", "ratio"),
]


def summarize(runs: list[dict]) -> dict:
    valid = [r for r in runs if r["valid"]]
    out = {"runs": len(runs), "valid_runs": len(valid), "valid": len(valid) == len(runs)}
    for _, key, _ in ROWS:
        out[key] = median([r.get(key) for r in valid]) if valid else None
    return out


def print_table(label: str, runs: list[dict], summary: dict) -> None:
    heads = ["median"] + [f"run {r['run']}" for r in runs] if len(runs) > 1 else ["run 1"]
    print(f"\n== {label} ==")
    width = max(len(r[0]) for r in ROWS)
    print(f"{'':{width}}  " + "  ".join(f"{h:>14}" for h in heads))
    for name, key, kind in ROWS:
        cells = [summary[key]] if len(runs) > 1 else []
        cells += [r.get(key) if r["valid"] else None for r in runs]
        text = [fmt(c, kind) for c in cells]
        if len(runs) == 1 and not runs[0]["valid"]:
            text = ["INVALID"]
        elif len(runs) > 1:
            text = text[:1] + [t if r["valid"] else "INVALID" for t, r in zip(text[1:], runs)]
        print(f"{name:{width}}  " + "  ".join(f"{t:>14}" for t in text))
    for r in runs:
        if not r["valid"]:
            print(f"run {r['run']}: INVALID: " + "; ".join(r["problems"]) + f" (logs: {r['logs']})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=8)
    parser.add_argument("--bets", type=int, default=500_000, help="bets per agency")
    parser.add_argument("--batch", type=int, help="CLI_BATCH_MAX_AMOUNT (default: the client's)")
    parser.add_argument("--window", type=int, help="CLI_BATCH_WINDOW (default: the client's)")
    parser.add_argument("--tls", choices=["off", "on", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dataset", help="a directory of agency-<k>.csv files to use instead")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--bench-dir", default="/tmp/loteria-bench")
    parser.add_argument("--profile", choices=["release", "debug"], default="release")
    parser.add_argument("--bin-dir", help="use the server and client binaries in this directory")
    args = parser.parse_args(argv)
    if args.agencies < 1 or args.agencies > 1000 or args.bets < 0 or args.runs < 1:
        parser.error("--agencies must be in 1..=1000, --bets ≥ 0, --runs ≥ 1")
    bench_dir = Path(args.bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    args.bench_dir = str(bench_dir.resolve())

    bins = binaries(args)
    directory, files, winners, total = prepare_data(args)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.tls]
    certs = prepare_certs(bench_dir, len(files)) if True in modes else None
    fs = subprocess.run(["stat", "-f", "-c", "%T", args.bench_dir], capture_output=True,
                        text=True).stdout.strip()
    print(f"bench: {len(files)} agencies, {total} bets ({directory}), batch "
          f"{args.batch or 'default'}, window {args.window or 'default'}, binaries {bins}, "
          f"bench dir {args.bench_dir} ({fs or '?'})", flush=True)
    report = {"agencies": len(files), "bets": total, "data": str(directory),
              "batch": args.batch, "window": args.window, "binaries": str(bins),
              "filesystem": fs, "modes": {}}
    for tls in modes:
        label = "TLS on" if tls else "TLS off"
        runs = []
        for i in range(1, args.runs + 1):
            print(f"bench: {label}, run {i}/{args.runs} …", flush=True)
            runs.append(run_once(args, bins, files, winners, total, tls, certs, i))
        summary = summarize(runs)
        print_table(f"{label}: {len(files)} agencies, {total} bets", runs, summary)
        report["modes"]["on" if tls else "off"] = {"summary": summary, "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    valid = all(m["summary"]["valid"] for m in report["modes"].values())
    print("\nbench: " + ("every run VALID" if valid else "INVALID runs above"))
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
