#!/usr/bin/env python3
"""Browser test of the server's HTTP status page (issue 8, "a lottery you can watch").

Builds the binaries (``cargo build --bins``), starts the real ``target/debug/server``
on loopback with ``SERVER_STATUS_PORT`` set, runs real ``client`` processes for two of
three agencies, and while they wait for the draw loads the page in headless Chromium:
a screenshot (its path, size in bytes and PNG dimensions are printed) and the DOM
(``--dump-dom``), which must show 2 of 3 agencies finished, agency 3 missing and the
stored bets. Then the third agency uploads, the draw runs, and the DOM must show the
draw done and each agency's winners; ``/metrics`` is scraped and its values checked
against the uploaded files. Finally SIGTERM must stop the server with exit code 0 and
close the page's port.

Standard library only. Fails (exit 1) if Chromium is missing: set ``CHROMIUM`` to its
path, or have ``chromium`` / ``chromium-browser`` / ``google-chrome`` on ``PATH``.

    python3 tests/web/test_status_page.py [--keep]    # --keep: keep the temp dir

The screenshots stay in ``target/web-test/`` (``waiting.png``, ``status-page.png``).
"""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER = os.path.join(ROOT, "target", "debug", "server")
# Where the screenshots are written (kept after the run).
SHOTS = os.path.join(ROOT, "target", "web-test")
CLIENT = os.path.join(ROOT, "target", "debug", "client")
WINNING = 7574
AGENCIES = 3
# Bets per agency, and which of them win (every `WIN_EVERY`-th bet has the number).
BETS = {1: 250, 2: 130, 3: 60}
WIN_EVERY = 40
TIMEOUT = 60.0


class Failure(Exception):
    """A check failed; the message says which."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def find_chromium():
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose stdout+stderr lines are collected by a thread."""

    def __init__(self, name, argv, env, cwd):
        self.name = name
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, needle, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise Failure(f"{self.name}: no line with {needle!r}\n" + self.dump())
                self.cond.wait(min(left, 0.5))

    def wait_exit(self, timeout=TIMEOUT):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"{self.name}: did not exit within {timeout}s\n" + self.dump())
        self.reader.join(5)
        return code

    def dump(self):
        with self.cond:
            return "\n".join(f"  [{self.name}] {line}" for line in self.lines[-40:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write_agency_file(path, agency, count):
    """`count` bets; every WIN_EVERY-th wins. Returns how many win."""
    winners = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i in range(count):
            number = WINNING if i % WIN_EVERY == 0 else (i * 7 + agency) % 7000
            winners += number == WINNING
            document = f"{agency:02d}{i:06d}"
            f.write(f"Ana María,Núñez,{document},1990-05-{1 + i % 28:02d},{number}\n")
    return winners


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def wait_status(base, what, predicate):
    deadline = time.monotonic() + TIMEOUT
    last = None
    while time.monotonic() < deadline:
        _, _, body = http_get(base + "/status.json")
        last = json.loads(body)
        if predicate(last):
            return last
        time.sleep(0.1)
    raise Failure(f"status never showed {what}: {last}")


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    check(head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG")
    check(head[12:16] == b"IHDR", f"{path} has no IHDR chunk first")
    return struct.unpack(">II", head[16:24])


def chromium(browser, profile, *args):
    argv = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=90)
    if done.returncode != 0:
        raise Failure(f"chromium failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    return done.stdout


def screenshot(browser, profile, url, path):
    if os.path.exists(path):
        os.remove(path)
    chromium(browser, profile, f"--screenshot={path}", "--window-size=1200,800", url)
    check(os.path.exists(path), f"chromium wrote no screenshot at {path}")
    size = os.path.getsize(path)
    width, height = png_size(path)
    check((width, height) == (1200, 800), f"screenshot is {width}x{height}, not 1200x800")
    check(size > 5000, f"screenshot of {size} bytes is suspiciously small")
    print(f"screenshot: {path} | bytes: {size} | png: {width}x{height}")
    return size


def dump_dom(browser, profile, url):
    return chromium(browser, profile, "--dump-dom", url)


def cell(dom, agency, column):
    match = re.search(
        rf'<tr id="agency-{agency}"[^>]*>.*?<td class="{column}">([^<]*)</td>', dom, re.S
    )
    check(match is not None, f"no {column} cell for agency {agency} in the DOM")
    return match.group(1)


def span(dom, ident):
    match = re.search(rf'<span id="{ident}"[^>]*>([^<]*)</span>', dom)
    check(match is not None, f'no <span id="{ident}"> in the DOM')
    return match.group(1)


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return int(line.split()[-1])
    raise Failure(f"no sample {series} in /metrics:\n{text}")


def run(workdir):
    browser = find_chromium()
    check(browser is not None, "chromium not found (install it, or set CHROMIUM=/path/to/it)")
    print(f"chromium: {browser}")
    build = subprocess.run(["cargo", "build", "--bins"], cwd=ROOT)
    check(build.returncode == 0, "cargo build --bins failed")

    expected_winners = {}
    files = {}
    for agency, count in BETS.items():
        files[agency] = os.path.join(workdir, f"agency-{agency}.csv")
        expected_winners[agency] = write_agency_file(files[agency], agency, count)
    status_port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "SERVER_HOST": "127.0.0.1",
            "SERVER_PORT": "0",
            "SERVER_AGENCIES": str(AGENCIES),
            "SERVER_WINNING_NUMBER": str(WINNING),
            "SERVER_STORAGE": os.path.join(workdir, "bets.csv"),
            "SERVER_STATUS_PORT": str(status_port),
            "LOGGING_LEVEL": "INFO",
        }
    )
    server = Proc(
        "server",
        [SERVER, "--config", os.path.join(ROOT, "config", "server.toml")],
        env,
        workdir,
    )
    clients = []
    try:
        line = server.wait_for("action: listen | result: success")
        address = re.search(r"address: (\S+)", line).group(1)
        page_line = server.wait_for("action: status_page | result: success")
        check(f"127.0.0.1:{status_port}" in page_line, f"status page address: {page_line}")
        base = f"http://127.0.0.1:{status_port}"

        def client(agency):
            cenv = dict(os.environ)
            cenv.update(
                {
                    "CLI_ID": str(agency),
                    "CLI_SERVER_ADDRESS": address,
                    "CLI_DATA": files[agency],
                    "CLI_LOG_LEVEL": "INFO",
                    "CLI_BATCH_MAX_AMOUNT": "50",
                }
            )
            proc = Proc(
                f"client{agency}",
                [CLIENT, "--config", os.path.join(ROOT, "config", "client.toml")],
                cenv,
                workdir,
            )
            clients.append(proc)
            return proc

        first = [client(1), client(2)]
        wait_status(base, "agencies 1 and 2 finished", lambda s: s["finished"] == 2)

        # While two agencies wait for the draw.
        dom = dump_dom(browser, os.path.join(workdir, "profile"), base + "/")
        check(span(dom, "finished") == "2", "DOM: finished is not 2")
        check(span(dom, "agencies") == "3", "DOM: agencies is not 3")
        check(span(dom, "missing") == "3", f"DOM: missing is {span(dom, 'missing')!r}")
        check("waiting for 1 of 3 agencies" in span(dom, "draw"), "DOM: draw state while waiting")
        for agency in (1, 2):
            check(cell(dom, agency, "bets") == str(BETS[agency]), f"DOM: bets of agency {agency}")
            check(cell(dom, agency, "finished") == "yes", f"DOM: agency {agency} finished")
            check(cell(dom, agency, "winners") == "—", f"DOM: winners of {agency} before the draw")
        check(cell(dom, 3, "finished") == "no", "DOM: agency 3 not finished")
        print("dom (waiting): finished 2 of 3, missing 3, bets shown")
        screenshot(
            browser, os.path.join(workdir, "profile"), base + "/", os.path.join(SHOTS, "waiting.png")
        )

        last = client(3)
        for proc in first + [last]:
            code = proc.wait_exit()
            check(code == 0, f"{proc.name} exit code {code}\n{proc.dump()}")
        wait_status(base, "the draw", lambda s: s["drawn"])

        dom = dump_dom(browser, os.path.join(workdir, "profile"), base + "/")
        total_winners = sum(expected_winners.values())
        check(span(dom, "finished") == "3", "DOM: finished is not 3 after the draw")
        check(span(dom, "missing") == "none", "DOM: agencies still missing after the draw")
        check(
            span(dom, "draw") == f"done: {total_winners} winners",
            f"DOM: draw state {span(dom, 'draw')!r}",
        )
        for agency, winners in expected_winners.items():
            check(
                cell(dom, agency, "winners") == str(winners),
                f"DOM: winners of agency {agency} = {cell(dom, agency, 'winners')}, want {winners}",
            )
            check(cell(dom, agency, "bets") == str(BETS[agency]), f"DOM: bets of agency {agency}")
        print(f"dom (drawn): winners {expected_winners}")
        path = os.path.join(SHOTS, "status-page.png")
        screenshot(browser, os.path.join(workdir, "profile"), base + "/", path)

        status, ctype, text = http_get(base + "/metrics")
        check(status == 200, f"/metrics answered {status}")
        check(ctype.startswith("text/plain; version=0.0.4"), f"/metrics content type {ctype!r}")
        total_bets = sum(BETS.values())
        checks = {
            "loteria_bets_stored_total": total_bets,
            "loteria_bets_in_storage": total_bets,
            "loteria_agencies": AGENCIES,
            "loteria_agencies_finished": AGENCIES,
            "loteria_draw_done": 1,
            "loteria_winners": total_winners,
            'loteria_errors_sent_total{code="INVALID_BET"}': 0,
        }
        for series, want in checks.items():
            got = metric(text, series)
            check(got == want, f"/metrics {series} = {got}, want {want}")
        check(metric(text, "loteria_batches_stored_total") >= len(BETS), "batches stored")
        check(metric(text, "loteria_received_bytes_total") > total_bets * 20, "bytes received")
        print("metrics: " + ", ".join(f"{k}={v}" for k, v in checks.items()))
        check(http_get(base + "/nope")[0] == 404, "an unknown path is not 404")

        summary = server.wait_for("action: draw_summary | result: success")
        check(f"| agencies: {AGENCIES} | bets: {total_bets} | winners: {total_winners} |" in summary,
              f"draw summary: {summary}")

        server.proc.send_signal(signal.SIGTERM)
        code = server.wait_exit(10)
        check(code == 0, f"server exit code {code}\n{server.dump()}")
        server.wait_for("action: status_page_stop | result: success", 1)
        with socket.socket() as s:
            s.settimeout(1)
            check(s.connect_ex(("127.0.0.1", status_port)) != 0, "the page still listens after exit")
        print(f"screenshots: {os.path.join(SHOTS, 'waiting.png')} {path}")
    finally:
        for proc in clients + [server]:
            proc.kill()


def main():
    keep = "--keep" in sys.argv[1:]
    os.makedirs(SHOTS, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="loteria-web-")
    try:
        run(workdir)
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        if os.listdir(workdir):
            print(f"(files kept in {workdir})", file=sys.stderr)
        else:
            os.rmdir(workdir)
        return 1
    if keep:
        print(f"files kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print("test_status_page: success")
    return 0


if __name__ == "__main__":
    sys.exit(main())
