//! The server's counters, kept with atomics (no lock), and their rendering in the
//! Prometheus text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Counters only grow during one run of the server; they start at 0 at each start-up
//! (what the store recovered is reported by the gauges, which are read from the
//! ledger when the page is rendered).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::ErrorCode;

/// Error codes `1..=LAST_CODE` have their own counter; any other is counted as code 0.
const LAST_CODE: usize = 20;

/// The server's counters. Every method is lock-free and may be called from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    bets_stored: AtomicU64,
    batches_stored: AtomicU64,
    batches_replayed: AtomicU64,
    bytes_received: AtomicU64,
    frames_received: AtomicU64,
    errors: [AtomicU64; LAST_CODE + 1],
    connections_accepted: AtomicU64,
    refused_busy: AtomicU64,
    tls_handshakes_failed: AtomicU64,
    status_queries: AtomicU64,
    draw_pending_sent: AtomicU64,
    /// HTTP answers by status: one counter per code of [`HTTP_CODES`], then others.
    http_requests: [AtomicU64; HTTP_CODES.len() + 1],
}

/// The HTTP status codes the status page answers with, each counted on its own.
const HTTP_CODES: [u16; 5] = [200, 400, 404, 405, 503];

/// Values read at render time from the ledger, the draw and the registry of
/// connections (gauges: they can go down, or are restored after a restart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Connections being served now.
    pub connections_open: u64,
    /// Agencies the lottery waits for (N).
    pub agencies: u32,
    /// Agencies whose `FIN` is recorded.
    pub agencies_finished: u32,
    /// Agencies with a connection bound now.
    pub agencies_connected: u32,
    /// Bets in storage (all runs).
    pub bets_in_storage: u64,
    /// Whether the draw's winners are known.
    pub draw_done: bool,
    /// Winning bets, once the draw is done.
    pub winners: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// A batch of `bets` bets was stored (not a replay).
    pub fn batch_stored(&self, bets: u64) {
        add(&self.batches_stored, 1);
        add(&self.bets_stored, bets);
    }

    /// The last batch was sent again and acknowledged again (not stored).
    pub fn batch_replayed(&self) {
        add(&self.batches_replayed, 1);
    }

    /// A whole frame of `bytes` bytes (header included) arrived.
    pub fn frame_received(&self, bytes: usize) {
        add(&self.frames_received, 1);
        add(
            &self.bytes_received,
            u64::try_from(bytes).unwrap_or(u64::MAX),
        );
    }

    /// An `ERROR` with `code` was sent (or tried).
    pub fn error_sent(&self, code: ErrorCode) {
        let index = usize::from(code.to_u16());
        let slot = if (1..=LAST_CODE).contains(&index) {
            index
        } else {
            0
        };
        add(&self.errors[slot], 1);
    }

    /// A connection was accepted (and given a thread).
    pub fn connection_accepted(&self) {
        add(&self.connections_accepted, 1);
    }

    /// A connection was refused with `SERVER_BUSY`.
    pub fn refused_busy(&self) {
        add(&self.refused_busy, 1);
        self.error_sent(ErrorCode::ServerBusy);
    }

    /// A TLS handshake failed (a refused certificate, a timeout, TLS off here).
    pub fn tls_handshake_failed(&self) {
        add(&self.tls_handshakes_failed, 1);
    }

    /// A `STATUS_QUERY` was answered.
    pub fn status_query(&self) {
        add(&self.status_queries, 1);
    }

    /// A `DRAW_PENDING` was written to a waiting agency.
    pub fn draw_pending_sent(&self) {
        add(&self.draw_pending_sent, 1);
    }

    /// The status page answered an HTTP request with `status` (or tried to, until
    /// its deadline).
    pub fn http_request(&self, status: u16) {
        let slot = HTTP_CODES
            .iter()
            .position(|&c| c == status)
            .unwrap_or(HTTP_CODES.len());
        add(&self.http_requests[slot], 1);
    }

    /// Bets stored by this run so far.
    pub fn bets_stored(&self) -> u64 {
        self.bets_stored.load(Ordering::Relaxed)
    }

    /// Renders every counter and `gauges` in the Prometheus text format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "loteria_bets_stored_total",
            "counter",
            "Bets stored (fsynced and acknowledged) since the server started.",
            get(&self.bets_stored),
        );
        metric(
            "loteria_batches_stored_total",
            "counter",
            "BETS batches stored since the server started.",
            get(&self.batches_stored),
        );
        metric(
            "loteria_batches_replayed_total",
            "counter",
            "Replays of the last stored batch, acknowledged again without storing.",
            get(&self.batches_replayed),
        );
        metric(
            "loteria_frames_received_total",
            "counter",
            "Whole protocol frames received.",
            get(&self.frames_received),
        );
        metric(
            "loteria_received_bytes_total",
            "counter",
            "Bytes of whole protocol frames received, headers included.",
            get(&self.bytes_received),
        );
        metric(
            "loteria_connections_accepted_total",
            "counter",
            "Connections accepted and served on the lottery port (agencies, status queries, echo checks).",
            get(&self.connections_accepted),
        );
        metric(
            "loteria_connections_open",
            "gauge",
            "Agency connections being served now.",
            gauges.connections_open,
        );
        metric(
            "loteria_connections_refused_busy_total",
            "counter",
            "Connections refused with SERVER_BUSY.",
            get(&self.refused_busy),
        );
        metric(
            "loteria_tls_handshakes_failed_total",
            "counter",
            "TLS handshakes that failed (refused certificates, timeouts, TLS off).",
            get(&self.tls_handshakes_failed),
        );
        metric(
            "loteria_status_queries_total",
            "counter",
            "STATUS_QUERY requests answered.",
            get(&self.status_queries),
        );
        metric(
            "loteria_draw_pending_sent_total",
            "counter",
            "DRAW_PENDING frames sent to agencies waiting for the draw.",
            get(&self.draw_pending_sent),
        );
        metric(
            "loteria_agencies",
            "gauge",
            "Agencies the lottery waits for.",
            u64::from(gauges.agencies),
        );
        metric(
            "loteria_agencies_finished",
            "gauge",
            "Agencies whose FIN is recorded.",
            u64::from(gauges.agencies_finished),
        );
        metric(
            "loteria_agencies_connected",
            "gauge",
            "Agencies with a connection bound now.",
            u64::from(gauges.agencies_connected),
        );
        metric(
            "loteria_bets_in_storage",
            "gauge",
            "Bets in storage, including those recovered at start-up.",
            gauges.bets_in_storage,
        );
        metric(
            "loteria_draw_done",
            "gauge",
            "1 once the draw has run and its winners are known, else 0.",
            u64::from(gauges.draw_done),
        );
        metric(
            "loteria_winners",
            "gauge",
            "Winning bets of the draw (0 before it).",
            gauges.winners,
        );
        // Each metric's HELP, TYPE and samples stay one group, as the text format wants.
        let _ = write!(
            out,
            "# HELP loteria_errors_sent_total ERROR replies sent, by code.\n\
             # TYPE loteria_errors_sent_total counter\n"
        );
        for (index, counter) in self.errors.iter().enumerate() {
            let name = if index == 0 {
                "OTHER"
            } else {
                // index is in 1..=LAST_CODE, far below u16::MAX.
                ErrorCode::from_u16(index as u16).name()
            };
            let _ = writeln!(
                out,
                "loteria_errors_sent_total{{code=\"{name}\"}} {}",
                get(counter)
            );
        }
        let _ = write!(
            out,
            "# HELP loteria_http_requests_total Answers of the status page (written, or tried until the request deadline), by HTTP status code.\n\
             # TYPE loteria_http_requests_total counter\n"
        );
        for (slot, counter) in self.http_requests.iter().enumerate() {
            let code = HTTP_CODES
                .get(slot)
                .map_or("other".to_string(), |c| c.to_string());
            let _ = writeln!(
                out,
                "loteria_http_requests_total{{code=\"{code}\"}} {}",
                get(counter)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.batch_stored(100);
        m.batch_stored(50);
        m.frame_received(4);
        m.frame_received(100);
        m.error_sent(ErrorCode::InvalidBet);
        m.error_sent(ErrorCode::InvalidBet);
        m.error_sent(ErrorCode::Other(999));
        m.refused_busy();
        m.connection_accepted();
        m.http_request(200);
        m.http_request(200);
        m.http_request(503);
        m.http_request(405);
        m.http_request(999);
        let text = m.render(&Gauges {
            agencies: 5,
            agencies_finished: 2,
            draw_done: true,
            ..Gauges::default()
        });
        assert_eq!(sample(&text, "loteria_bets_stored_total"), Some(150));
        assert_eq!(sample(&text, "loteria_batches_stored_total"), Some(2));
        assert_eq!(sample(&text, "loteria_received_bytes_total"), Some(104));
        assert_eq!(sample(&text, "loteria_frames_received_total"), Some(2));
        assert_eq!(
            sample(&text, "loteria_errors_sent_total{code=\"INVALID_BET\"}"),
            Some(2)
        );
        assert_eq!(
            sample(&text, "loteria_errors_sent_total{code=\"SERVER_BUSY\"}"),
            Some(1)
        );
        assert_eq!(
            sample(&text, "loteria_errors_sent_total{code=\"OTHER\"}"),
            Some(1)
        );
        assert_eq!(
            sample(&text, "loteria_connections_refused_busy_total"),
            Some(1)
        );
        assert_eq!(
            sample(&text, "loteria_http_requests_total{code=\"200\"}"),
            Some(2)
        );
        for code in ["503", "405", "other"] {
            assert_eq!(
                sample(
                    &text,
                    &format!("loteria_http_requests_total{{code=\"{code}\"}}")
                ),
                Some(1),
                "{code}"
            );
        }
        assert_eq!(
            sample(&text, "loteria_http_requests_total{code=\"404\"}"),
            Some(0)
        );
        assert_eq!(sample(&text, "loteria_agencies_finished"), Some(2));
        assert_eq!(sample(&text, "loteria_draw_done"), Some(1));
        assert_eq!(m.bets_stored(), 150);
        // Every sample line belongs to a family announced by HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} has a TYPE line"
            );
            assert!(text.contains(&format!("# HELP {family} ")));
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn each_metric_is_one_group_with_help_and_type_first() {
        // Regression: the errors' HELP/TYPE came before the HTTP family and their
        // samples after it, which the text format does not allow.
        let m = Metrics::default();
        m.error_sent(ErrorCode::InvalidBet);
        m.http_request(200);
        let text = m.render(&Gauges::default());
        let family = |line: &str| -> String {
            match line.strip_prefix("# ") {
                Some(rest) => rest.split(' ').nth(1).unwrap_or_default().to_string(),
                None => line
                    .split(['{', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            }
        };
        let mut seen: Vec<String> = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let name = family(line);
            assert!(
                !seen.contains(&name),
                "{name} appears in two groups:\n{text}"
            );
            assert!(
                line.starts_with("# HELP "),
                "{name}: the group starts with HELP"
            );
            let type_line = lines.next().unwrap_or_default();
            assert!(
                type_line.starts_with(&format!("# TYPE {name} ")),
                "{name}: then TYPE"
            );
            let mut samples = 0;
            while lines.peek().is_some_and(|l| !l.starts_with('#')) {
                let sample = lines.next().unwrap_or_default();
                assert_eq!(
                    family(sample),
                    name,
                    "a sample of another family inside {name}"
                );
                samples += 1;
            }
            assert!(samples > 0, "{name} has samples");
            seen.push(name);
        }
    }
}
