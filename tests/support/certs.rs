//! A throw-away lottery PKI for the TLS tests, made with rcgen: a CA, the server's
//! certificate (for `localhost` and `127.0.0.1`), and agency certificates — good ones,
//! expired ones, and ones from a foreign CA — as PEM files in a temporary directory.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::PathBuf;

use loteria::tls::{ClientTls, TlsFiles, agency_name};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};

use super::TempDir;

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that can issue certificates, and where its certificate is.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert: PathBuf,
}

/// The lottery's PKI for one test.
pub struct TestPki {
    pub dir: TempDir,
    pub ca: Authority,
    pub server: Pair,
}

pub fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Authority {
    fn new(dir: &TempDir, name: &str) -> Authority {
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(ca_params(name), key).expect("CA cert");
        let cert = dir.join(&format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write CA");
        Authority { issuer, cert }
    }

    /// Issues a leaf for `names` with `usage`, valid from `from` to `until` (years),
    /// written as `<file>.pem` / `<file>.key` in `dir`.
    fn issue(
        &self,
        dir: &TempDir,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        (from, until): (i32, i32),
    ) -> Pair {
        let mut params = leaf_params(names, usage);
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(until, 1, 1);
        let key = KeyPair::generate().expect("leaf key");
        self.write_signed(dir, file, &params, &key)
    }

    /// Signs `params` (for `key`) with this CA and writes `<file>.pem` / `<file>.key`.
    pub fn write_signed(
        &self,
        dir: &TempDir,
        file: &str,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Pair {
        let cert = params.signed_by(key, &self.issuer).expect("sign");
        write_pair(dir, file, &cert.pem(), key)
    }

    /// The CA's own certificate and key, as a pair of files.
    pub fn own_pair(&self, dir: &TempDir, file: &str) -> Pair {
        write_pair(dir, file, &self.issuer.pem(), self.issuer.key())
    }
}

/// Writes `cert_pem` and `key` as `<file>.pem` / `<file>.key` in `dir`.
pub fn write_pair(dir: &TempDir, file: &str, cert_pem: &str, key: &KeyPair) -> Pair {
    let pair = Pair {
        cert: dir.join(&format!("{file}.pem")),
        key: dir.join(&format!("{file}.key")),
    };
    std::fs::write(&pair.cert, cert_pem).expect("write cert");
    std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
    pair
}

/// The parameters of a good leaf for `names` (DNS names or IP addresses) and `usage`:
/// no CA, digital signature, valid for years (tests change what they probe).
pub fn leaf_params(names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.not_before = date_time_ymd(GOOD.0, 1, 1);
    params.not_after = date_time_ymd(GOOD.1, 1, 1);
    params
}

/// Signs `params` (for `key`) with a certificate that is *not* a CA — `issuer_params`
/// and `issuer_key`, e.g. an agency's own — and writes `<file>.pem` holding the chain
/// (the leaf, then the issuer's certificate `issuer_pem`).
pub fn write_signed_by_leaf(
    dir: &TempDir,
    file: &str,
    params: &CertificateParams,
    key: &KeyPair,
    issuer_params: &CertificateParams,
    issuer_key: &KeyPair,
    issuer_pem: &str,
) -> Pair {
    let issuer = Issuer::from_params(issuer_params, issuer_key);
    let cert = params.signed_by(key, &issuer).expect("sign with a leaf");
    write_pair(dir, file, &format!("{}{issuer_pem}", cert.pem()), key)
}

/// Validity of a good certificate: from last year for a long time.
const GOOD: (i32, i32) = (2020, 2090);
/// Validity of an expired one.
const EXPIRED: (i32, i32) = (2010, 2011);

impl TestPki {
    pub fn new() -> TestPki {
        let dir = TempDir::new("pki");
        let ca = Authority::new(&dir, "lottery-ca");
        let server = ca.issue(
            &dir,
            "server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            GOOD,
        );
        TestPki { dir, ca, server }
    }

    /// Agency `k`'s certificate and key, signed by the lottery CA.
    pub fn agency(&self, k: u32) -> Pair {
        let name = agency_name(k);
        self.ca.issue(
            &self.dir,
            &name,
            &[&name],
            ExtendedKeyUsagePurpose::ClientAuth,
            GOOD,
        )
    }

    /// Agency `k`'s certificate, but expired.
    pub fn expired_agency(&self, k: u32) -> Pair {
        let name = agency_name(k);
        self.ca.issue(
            &self.dir,
            &format!("{name}-expired"),
            &[&name],
            ExtendedKeyUsagePurpose::ClientAuth,
            EXPIRED,
        )
    }

    /// A certificate naming agency `k`, signed by another CA.
    pub fn foreign_agency(&self, k: u32) -> Pair {
        let other = Authority::new(&self.dir, "foreign-ca");
        let name = agency_name(k);
        other.issue(
            &self.dir,
            &format!("{name}-foreign"),
            &[&name],
            ExtendedKeyUsagePurpose::ClientAuth,
            GOOD,
        )
    }

    /// A server certificate for `localhost` signed by another CA.
    pub fn foreign_server(&self) -> (PathBuf, Pair) {
        let other = Authority::new(&self.dir, "foreign-server-ca");
        let pair = other.issue(
            &self.dir,
            "foreign-server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            GOOD,
        );
        (other.cert.clone(), pair)
    }

    /// The server's `[tls]` files.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles {
            ca: Some(self.ca.cert.clone()),
            cert: Some(self.server.cert.clone()),
            key: Some(self.server.key.clone()),
        }
    }

    /// An agency's `[tls]` files for `pair` (or none: CA only).
    pub fn client_files(&self, pair: Option<&Pair>) -> TlsFiles {
        TlsFiles {
            ca: Some(self.ca.cert.clone()),
            cert: pair.map(|p| p.cert.clone()),
            key: pair.map(|p| p.key.clone()),
        }
    }

    /// A loaded client TLS set-up for `pair` (or none: CA only).
    pub fn client_tls(&self, pair: Option<&Pair>) -> ClientTls {
        ClientTls::load(
            &self.ca.cert,
            pair.map(|p| (p.cert.as_path(), p.key.as_path())),
        )
        .expect("client TLS loads")
    }
}

/// Certificates no agency is issued by `make certs`, for the attack catalogue
/// (`tests/attacks.rs`): each must be refused by the server's handshake or, when it
/// does chain to the lottery CA as a client certificate, speak for no other agency.
impl TestPki {
    /// The lottery CA's own certificate and key, presented as a client certificate (a
    /// CA used as a leaf).
    pub fn ca_as_client(&self) -> Pair {
        let pair = Pair {
            cert: self.dir.join("ca-as-client.pem"),
            key: self.dir.join("ca-as-client.key"),
        };
        std::fs::write(&pair.cert, self.ca.issuer.pem()).expect("write CA cert");
        std::fs::write(&pair.key, self.ca.issuer.key().serialize_pem()).expect("write CA key");
        pair
    }

    /// An intermediate CA certificate (`CA:TRUE`) for the name `agency-k`, meant for
    /// client authentication and signed by the lottery CA: a CA certificate as a leaf.
    pub fn ca_for_agency(&self, k: u32) -> Pair {
        let name = agency_name(k);
        let mut params = ca_params(&name);
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            name.clone().try_into().expect("a DNS name"),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = date_time_ymd(GOOD.0, 1, 1);
        params.not_after = date_time_ymd(GOOD.1, 1, 1);
        let key = KeyPair::generate().expect("intermediate key");
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .expect("sign intermediate");
        let pair = Pair {
            cert: self.dir.join(&format!("{name}-ca.pem")),
            key: self.dir.join(&format!("{name}-ca.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }

    /// A certificate of the lottery CA for `agency-k`, but for the server's role
    /// (`serverAuth`), not a client's.
    pub fn agency_as_server(&self, k: u32) -> Pair {
        let name = agency_name(k);
        self.ca.issue(
            &self.dir,
            &format!("{name}-server-role"),
            &[&name],
            ExtendedKeyUsagePurpose::ServerAuth,
            GOOD,
        )
    }

    /// A good client certificate of the lottery CA for exactly `names` (written as
    /// `<file>.pem` / `<file>.key`).
    pub fn client_for_names(&self, file: &str, names: &[&str]) -> Pair {
        self.ca.issue(
            &self.dir,
            file,
            names,
            ExtendedKeyUsagePurpose::ClientAuth,
            GOOD,
        )
    }
}
