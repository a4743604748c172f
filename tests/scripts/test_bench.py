#!/usr/bin/env python3
"""scripts/bench.py: its log-line parsers and one real tiny run.

    python3 tests/scripts/test_bench.py [-v] [unittest arguments]

The parsers are fed the lines the server and the client log (docs/BENCHMARKS.md
names them). The smoke run is 2 agencies x 2000 bets with TLS off, once, on the real
binaries: the debug build (`cargo build --locked`, which `make test-rust` has made
already), or the binaries in $LOTERIA_BENCH_BIN_DIR; it checks that the run is VALID
and that every figure is there, never how fast it was. Python 3.11 or later,
standard library only.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402  (scripts/bench.py)

STAMP = "2026-12-02 13:00:00 INFO     "


class ParseTest(unittest.TestCase):
    def test_listen_line(self):
        self.assertEqual(bench.parse_listen(
            STAMP + "action: listen | result: success | address: 127.0.0.1:40123"),
            ("127.0.0.1", 40123))
        self.assertEqual(bench.parse_listen(
            STAMP + "action: listen | result: success | address: [::1]:9"), ("::1", 9))
        self.assertIsNone(bench.parse_listen(
            STAMP + "action: listen | result: fail | address: 127.0.0.1:1"))
        self.assertIsNone(bench.parse_listen(STAMP + "action: connection_limit | result: "
                                             "success | max_connections: 512"))
        self.assertIsNone(bench.parse_listen("no fields at all"))

    def test_upload_line_without_the_ack_fields(self):
        got = bench.parse_upload(
            STAMP + "action: upload | result: success | client_id: 3 | bets_sent: 2000 | "
            "batches: 20 | skipped: 0 | percent: 100 | elapsed: 41ms | rate: 48780 bets/s | "
            "resumed: 0")
        self.assertEqual(got, {"bets_sent": 2000, "batches": 20, "window": None,
                               "ack_p50_us": None, "ack_p99_us": None})

    def test_upload_line_with_the_ack_fields(self):
        got = bench.parse_upload(
            STAMP + "action: upload | result: success | client_id: 1 | bets_sent: 500000 | "
            "batches: 5000 | skipped: 0 | percent: 100 | elapsed: 2.1s | rate: 238095 bets/s "
            "| resumed: 0 | window: 8 | ack_p50_us: 812 | ack_p99_us: 4031\n")
        self.assertEqual(got, {"bets_sent": 500000, "batches": 5000, "window": 8,
                               "ack_p50_us": 812, "ack_p99_us": 4031})

    def test_upload_progress_and_failure_lines_are_not_the_last_upload_line(self):
        self.assertIsNone(bench.parse_upload(
            STAMP + "action: upload | result: in_progress | client_id: 1 | bets_sent: 10"))
        self.assertIsNone(bench.parse_upload(
            STAMP.replace("INFO ", "ERROR") + "action: upload | result: fail | client_id: 1 "
            "| error: refused"))

    def test_draw_and_winners_lines(self):
        self.assertEqual(bench.parse_draw(
            STAMP + "action: sorteo | result: success | bets: 78697 | winning_number: 7574 "
            "| winners: 10 | elapsed: 12ms"),
            {"bets": 78697, "winners": 10, "elapsed_ms": 12})
        self.assertIsNone(bench.parse_draw(STAMP + "action: sorteo | result: fail | error: x"))
        self.assertEqual(bench.parse_winners(
            STAMP + "action: ganadores | result: success | client_id: 2 | dnis: 30876370,24813860"),
            ["30876370", "24813860"])
        self.assertEqual(bench.parse_winners(
            STAMP + "action: ganadores | result: success | client_id: 5 | dnis: "), [])

    def test_median(self):
        self.assertEqual(bench.median([3, 1, 2]), 2)
        self.assertEqual(bench.median([4, 1, 3, 2]), 2.5)
        self.assertEqual(bench.median([None, 5, None]), 5)
        self.assertIsNone(bench.median([None, None]))
        self.assertIsNone(bench.median([]))

    def test_expected_winners_read_from_the_files(self):
        with tempfile.TemporaryDirectory(prefix="loteria-bench-test-") as tmp:
            one, two = Path(tmp) / "agency-1.csv", Path(tmp) / "agency-2.csv"
            one.write_bytes("Ana,Peña,30000001,1990-01-01,7574\r\n"
                            "Ana,Peña,30000002,1990-01-01,7575\r\n"
                            "Ana,Peña,20000003,1990-01-01,7574\r\n".encode())
            two.write_bytes(b"")
            files = bench.agency_files(Path(tmp))
            self.assertEqual(files, [one, two])
            self.assertEqual(bench.expected_winners(files, 7574),
                             ([["20000003", "30000001"], []], 3))


class SmokeRunTest(unittest.TestCase):
    def test_two_agencies_of_2000_bets_without_tls(self):
        with tempfile.TemporaryDirectory(prefix="loteria-bench-smoke-") as tmp:
            out = Path(tmp) / "bench.json"
            where = os.environ.get("LOTERIA_BENCH_BIN_DIR")
            binaries = ["--bin-dir", where] if where else ["--profile", "debug"]
            result = subprocess.run(
                [sys.executable, str(ROOT / "scripts/bench.py"), "--agencies", "2", "--bets",
                 "2000", "--tls", "off", "--runs", "1", "--bench-dir", tmp, "--json",
                 str(out), *binaries], capture_output=True, text=True, timeout=600, cwd=ROOT)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("every run VALID", result.stdout)
            for row in ("end-to-end bets/s", "ACK p50", "ACK p99", "draw", "server peak RSS",
                        "client 1 peak RSS", "disk (b)", "end-to-end / disk (b)"):
                self.assertIn(row, result.stdout)
            report = json.loads(out.read_text())
            self.assertEqual((report["agencies"], report["bets"]), (2, 4000))
            self.assertEqual(list(report["modes"]), ["off"])
            run = report["modes"]["off"]["runs"][0]
            self.assertTrue(run["valid"], run["problems"])
            for key in ("wall_s", "bets_per_s", "server_rss_bytes", "client_rss_bytes",
                        "stored_bytes", "bytes_per_bet", "disk_end_mb_per_s",
                        "disk_every_mib_mb_per_s", "disk_every_mib_bets_per_s",
                        "ratio_to_disk_every_mib"):
                self.assertGreater(run[key], 0, key)
            self.assertIsNotNone(run["draw_ms"])
            # 2 agencies of the generator's default: 2 and 3 winners.
            self.assertEqual(run["winners"], 5)
            summary = report["modes"]["off"]["summary"]
            self.assertEqual((summary["runs"], summary["valid_runs"]), (1, 1))
            self.assertEqual(summary["bets_per_s"], run["bets_per_s"])
            # The data is kept for the next run, the storage is not.
            self.assertTrue((Path(tmp) / "data-2x2000" / "expected.json").is_file())
            self.assertFalse((Path(tmp) / "runs" / "plain-1" / "storage").exists())

    def test_a_failing_client_makes_the_run_invalid(self):
        with tempfile.TemporaryDirectory(prefix="loteria-bench-invalid-") as tmp:
            where = os.environ.get("LOTERIA_BENCH_BIN_DIR")
            binaries = ["--bin-dir", where] if where else ["--profile", "debug"]
            # A batch of 0 bets is a configuration error: every client exits non-zero.
            result = subprocess.run(
                [sys.executable, str(ROOT / "scripts/bench.py"), "--agencies", "1", "--bets",
                 "10", "--tls", "off", "--runs", "1", "--batch", "0", "--bench-dir", tmp,
                 *binaries], capture_output=True, text=True, timeout=600, cwd=ROOT)
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertIn("INVALID: client 1 exited with", result.stdout)
            self.assertNotIn("every run VALID", result.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
