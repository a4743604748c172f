//! Mutual TLS: the lottery's certificates, the rustls configuration of each side,
//! and the identity rule.
//!
//! The lottery has its own certificate authority (`make certs` makes it). The server
//! presents a certificate for its host name; every agency presents its own, and the
//! server accepts a `HELLO` for agency `k` only from a certificate valid for the name
//! [`agency_name`]`(k)` (`agency-k`, a DNS subject alternative name). The check is
//! rustls-webpki's own name matching ([`speaks_for`]): nothing of the certificate is
//! parsed here.
//!
//! Only TLS 1.3 is offered, with rustls' `ring` provider. Both sides check the peer's
//! chain and validity dates against the lottery CA; extended key usage keeps the
//! roles apart (an agency's certificate, issued for client authentication, cannot
//! pose as the server, and the server's cannot act as an agency).
//!
//! A TLS connection starts with the handshake record byte [`HANDSHAKE_BYTE`], which
//! is neither our protocol's version byte nor text: the server tells the three apart
//! on one port by the first byte.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::bet::AgencyId;

/// The first byte of every TLS connection (a handshake record, RFC 8446 §5.1).
pub const HANDSHAKE_BYTE: u8 = 0x16;

/// The largest certificate or key file read, in bytes (a PEM chain is a few KiB).
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// The name agency `agency`'s certificate must be valid for: `agency-<id>`.
pub fn agency_name(agency: AgencyId) -> String {
    format!("agency-{agency}")
}

/// Whether `cert` (an end-entity certificate the handshake already verified against
/// the lottery CA) speaks for `agency`: it is valid for the name
/// [`agency_name`]`(agency)`.
pub fn speaks_for(cert: &CertificateDer<'_>, agency: AgencyId) -> bool {
    let Ok(name) = ServerName::try_from(agency_name(agency)) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => cert.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// Why the TLS material could not be used; names the configuration key and the file.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Read {
        /// The configuration key that names it (`tls.cert`, …).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file holds no usable certificate or key.
    Content {
        /// The configuration key that names it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (a key that does not match its certificate, …).
    Setup {
        /// What was being set up.
        what: &'static str,
        /// rustls' reason.
        reason: String,
    },
    /// The server address has no host name a certificate can be checked against.
    ServerName {
        /// The address.
        address: String,
    },
    /// An agency's own certificate does not speak for it (`tls.cert` of another
    /// agency), or it has none for bets mode.
    NotThisAgency {
        /// The agency this client is (`id`).
        agency: AgencyId,
        /// Whether a certificate is configured at all.
        has_cert: bool,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { key, path, reason } => {
                write!(f, "{key}: cannot read {}: {reason}", path.display())
            }
            TlsError::Content { key, path, reason } => {
                write!(f, "{key}: {}: {reason}", path.display())
            }
            TlsError::Setup { what, reason } => write!(f, "cannot set up {what}: {reason}"),
            TlsError::NotThisAgency {
                agency,
                has_cert: true,
            } => write!(
                f,
                "tls.cert is not agency {agency}'s certificate (it is not valid for the name {}): the server would refuse it",
                agency_name(*agency)
            ),
            TlsError::NotThisAgency {
                agency,
                has_cert: false,
            } => write!(
                f,
                "uploading over TLS needs agency {agency}'s certificate and key: set tls.cert and tls.key (make certs writes certs/agency-{agency}.pem and .key)"
            ),
            TlsError::ServerName { address } => write!(
                f,
                "server.address {address:?} has no host name or IP address to check the server's certificate against"
            ),
        }
    }
}

impl std::error::Error for TlsError {}

/// The paths of one side's TLS material, as configured (`[tls] ca, cert, key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The lottery CA's certificate (PEM), which the peer's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// This side's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// This side's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether no file is configured (TLS off).
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Reads a PEM file of at most [`MAX_PEM_FILE`] bytes.
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |e: std::io::Error| TlsError::Read {
        key,
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(TlsError::Content {
            key,
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::Content {
            key,
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_PEM_FILE} bytes; not a PEM certificate or key"),
        });
    }
    Ok(bytes)
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(key, path)?;
    let content = |reason: String| TlsError::Content {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(content("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Content {
        key,
        path: path.to_path_buf(),
        reason: format!("holds no PEM private key ({e})"),
    })
}

fn roots(key: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(key, path)? {
        roots.add(cert).map_err(|e| TlsError::Content {
            key,
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate ({e})"),
        })?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup(what: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |e| TlsError::Setup {
        what,
        reason: e.to_string(),
    }
}

/// The server's TLS: its certificate and key, and the lottery CA that every agency's
/// certificate must chain to.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Loads the server's material (`[tls] ca, cert, key`, all three needed).
    ///
    /// A client certificate is optional in the handshake (so that a TLS client
    /// without one can still ask for the status or echo), but one that is presented
    /// must chain to the CA, be within its dates and be meant for client
    /// authentication, or the handshake fails; a `HELLO` needs one ([`speaks_for`]).
    /// Sessions are never resumed: every connection is checked in full.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots("tls.ca", ca)?, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Setup {
                    what: "the check of the agencies' certificates",
                    reason: e.to_string(),
                })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("TLS 1.3"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certificates("tls.cert", cert)?,
                private_key("tls.key", key)?,
            )
            .map_err(setup(
                "the server's certificate and key (tls.cert, tls.key)",
            ))?;
        // No session resumption: a resumed session would skip the check of the
        // agency's certificate (its dates included) on that connection. Agencies
        // connect a few times per lottery; a full handshake each time costs nothing.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration, for [`crate::connection::Connection::accept_tls`].
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }
}

/// An agency's TLS: the lottery CA to check the server against, and the agency's own
/// certificate and key (optional: without them only status and echo work).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    own: Option<CertificateDer<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Loads an agency's material: `ca` always, `cert` and `key` together or neither.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("TLS 1.3"))?
            .with_root_certificates(roots("tls.ca", ca)?);
        let (config, own) = match identity {
            Some((cert, key)) => {
                let chain = certificates("tls.cert", cert)?;
                let own = chain.first().cloned();
                let config = builder
                    .with_client_auth_cert(chain, private_key("tls.key", key)?)
                    .map_err(setup(
                        "the agency's certificate and key (tls.cert, tls.key)",
                    ))?;
                (config, own)
            }
            None => (builder.with_no_client_auth(), None),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            own,
        })
    }

    /// The rustls configuration, for [`crate::connection::Connection::connect_tls`].
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// Whether this side has a certificate, and if so whether it speaks for `agency`
    /// (`None`: no certificate).
    pub fn speaks_for(&self, agency: AgencyId) -> Option<bool> {
        self.own.as_ref().map(|cert| speaks_for(cert, agency))
    }
}

/// The name the server's certificate is checked against: the host of `address`
/// (`host:port`, `[v6]:port`), a DNS name or an IP address.
pub fn server_name(address: &str) -> Result<ServerName<'static>, TlsError> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _port)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName {
        address: address.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_names_are_the_identity() {
        assert_eq!(agency_name(1), "agency-1");
        assert_eq!(agency_name(1_000_000), "agency-1000000");
        assert!(ServerName::try_from(agency_name(42)).is_ok());
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        let name = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(name("server:12345").ok().as_deref(), Some("server"));
        assert_eq!(name("127.0.0.1:12345").ok().as_deref(), Some("127.0.0.1"));
        assert_eq!(name("[::1]:12345").ok().as_deref(), Some("::1"));
        assert!(server_name("bad host!:1").is_err());
    }

    #[test]
    fn the_handshake_byte_is_neither_a_frame_nor_text() {
        assert_ne!(HANDSHAKE_BYTE, crate::protocol::VERSION);
        assert!(!crate::connection::starts_plain_text(HANDSHAKE_BYTE));
    }

    #[test]
    fn missing_and_empty_files_name_the_key() {
        let dir = std::env::temp_dir().join(format!("loteria-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").expect("write");
        let missing = dir.join("missing.pem");
        let err = ServerTls::load(&missing, &empty, &empty).expect_err("missing CA");
        assert!(err.to_string().starts_with("tls.ca: cannot read"), "{err}");
        let err = ServerTls::load(&empty, &empty, &empty).expect_err("empty CA");
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        let err = ClientTls::load(&dir, None).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
