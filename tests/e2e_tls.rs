//! The real binaries over mutual TLS with the certificates `make certs` makes
//! (`scripts/make-certs.sh`, OpenSSL): what the deployment uses, checked on the host
//! in seconds. The rcgen PKI of `tests/tls.rs` proves the rules; this proves that the
//! OpenSSL-made files satisfy rustls and rustls-webpki.
mod support;

use std::path::Path;
use std::process::Command;

use support::process::{Proc, Server, start_client};
use support::{TempDir, mock_agencies, write_files};

/// Runs `scripts/make-certs.sh` into `dir` for `agencies` agencies.
fn make_certs(dir: &Path, agencies: u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-certs.sh");
    let out = Command::new(script)
        .env("CERTS_DIR", dir)
        .env("CERTS_AGENCIES", agencies.to_string())
        .output()
        .expect("run scripts/make-certs.sh (needs openssl: scripts/ensure-tools.sh openssl)");
    assert!(
        out.status.success(),
        "make-certs.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name)
        .to_str()
        .expect("UTF-8 temp path")
        .to_string()
}

#[test]
fn the_binaries_run_a_lottery_over_tls_with_make_certs_files() {
    let dir = TempDir::new("e2e-tls");
    let certs = dir.join("certs");
    make_certs(&certs, 3);
    let agencies = mock_agencies(&[300, 200, 0], 9);
    let files = write_files(&dir, &agencies);
    let (ca, cert, key) = (
        path(&certs, "ca.pem"),
        path(&certs, "server.pem"),
        path(&certs, "server.key"),
    );
    let mut server = Server::start_with(
        dir.path(),
        3,
        &[
            ("SERVER_TLS_CA", &ca),
            ("SERVER_TLS_CERT", &cert),
            ("SERVER_TLS_KEY", &key),
        ],
    );
    let port = server.addr.port();
    let mut clients: Vec<Proc> = files
        .iter()
        .zip(1..)
        .map(|(file, id): (_, u32)| {
            let (cert, key) = (
                path(&certs, &format!("agency-{id}.pem")),
                path(&certs, &format!("agency-{id}.key")),
            );
            // The server's certificate names localhost (and 127.0.0.1).
            let address = if id == 1 {
                format!("localhost:{port}")
            } else {
                format!("127.0.0.1:{port}")
            };
            start_client(
                id,
                server.addr,
                file,
                &[
                    ("CLI_SERVER_ADDRESS", &address),
                    ("CLI_TLS_CA", &ca),
                    ("CLI_TLS_CERT", &cert),
                    ("CLI_TLS_KEY", &key),
                ],
            )
        })
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.exit_code(), 0, "client {}\n{}", i + 1, client.dump());
        let line = client
            .log_lines("consulta_ganadores", "success")
            .pop()
            .unwrap_or_else(|| panic!("no winners line\n{}", client.dump()));
        assert!(
            line.ends_with(&format!("cant_ganadores: {}", agencies[i].1.len())),
            "{line}"
        );
        assert_eq!(
            client.log_lines("tls", "success").len(),
            1,
            "{}",
            client.dump()
        );
        assert!(client.log_lines("tls", "success")[0].contains("tls: on"));
    }
    // Agency 2's files as agency 3: the client refuses to start with them.
    let mut impostor = start_client(
        3,
        server.addr,
        &files[2],
        &[
            ("CLI_SERVER_ADDRESS", &format!("localhost:{port}")),
            ("CLI_TLS_CA", &ca),
            ("CLI_TLS_CERT", &path(&certs, "agency-2.pem")),
            ("CLI_TLS_KEY", &path(&certs, "agency-2.key")),
        ],
    );
    assert_eq!(impostor.exit_code(), 1, "{}", impostor.dump());
    assert!(
        impostor
            .dump()
            .contains("tls.cert is not agency 3's certificate"),
        "{}",
        impostor.dump()
    );
    server.stop();
    let on = server.proc.log_lines("tls", "success");
    assert!(
        on.len() == 1 && on[0].contains("tls: on | required: true"),
        "{on:?}"
    );
    assert_eq!(server.proc.log_lines("sorteo", "success").len(), 1);
    assert_eq!(
        server.proc.log_lines("tls_handshake", "fail").len(),
        0,
        "{}",
        server.proc.dump()
    );
}
