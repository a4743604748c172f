//! The upload id: a fingerprint of what the agency uploads.
//!
//! The server keys an agency's stored bets by `(agency, upload)`; a restarted client
//! with the same file computes the same id and so resumes its upload instead of
//! starting another. The fingerprint is CRC-64/XZ: cheap, stable across builds and
//! platforms, and good enough to tell two different files apart (it is an identity,
//! not a security check). `0` is reserved (the server uses it for bets it adopted
//! without an upload id), so a CRC of `0` becomes `1`.
//!
//! A file's fingerprint is taken over its *normalised* bytes: every CRLF counts as
//! LF, and a missing final line break as present. The agency file reader reads the
//! same bets either way, so converting a file between CRLF and LF (git's autocrlf, an
//! editor) keeps its upload and resumes it. An LF file ending in a line break is its
//! own normal form: its fingerprint is the plain CRC of its bytes.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::bet::{AgencyId, Bet};

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Bytes read at a time while fingerprinting a file.
const CHUNK: usize = 64 * 1024;

/// Separates the fields of a bet's canonical text: a control character, which a valid
/// bet's names never hold (and documents, dates and numbers cannot), so the text is
/// unambiguous.
const SEPARATOR: &str = "\u{1f}";

/// Maps the reserved id `0` to `1`.
fn non_zero(crc: u64) -> u64 {
    if crc == 0 { 1 } else { crc }
}

/// A CRC-64 digest of text with its line ends normalised, fed in pieces: a CR that
/// ends one piece is held until the next piece shows whether an LF follows it.
struct Normalised {
    digest: crc::Digest<'static, u64>,
    /// The last piece ended with a CR not yet hashed.
    pending_cr: bool,
    /// The last byte hashed (`None`: nothing yet).
    last: Option<u8>,
}

impl Normalised {
    fn new() -> Normalised {
        Normalised {
            digest: CRC64.digest(),
            pending_cr: false,
            last: None,
        }
    }

    fn hash(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.digest.update(bytes);
            self.last = Some(last);
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.pending_cr {
            self.pending_cr = false;
            if bytes[0] == b'\n' {
                // CRLF split across two pieces: one LF.
                self.hash(b"\n");
                bytes = &bytes[1..];
            } else {
                self.hash(b"\r");
            }
        }
        while let Some(cr) = bytes.iter().position(|&b| b == b'\r') {
            self.hash(&bytes[..cr]);
            match bytes.get(cr + 1) {
                Some(b'\n') => {
                    self.hash(b"\n");
                    bytes = &bytes[cr + 2..];
                }
                Some(_) => {
                    self.hash(b"\r");
                    bytes = &bytes[cr + 1..];
                }
                None => {
                    self.pending_cr = true;
                    return;
                }
            }
        }
        self.hash(bytes);
    }

    fn finish(mut self) -> u64 {
        if self.pending_cr {
            self.pending_cr = false;
            self.hash(b"\r");
        }
        if self.last.is_some_and(|last| last != b'\n') {
            self.hash(b"\n");
        }
        non_zero(self.digest.finalize())
    }
}

/// The fingerprint of everything `reader` yields (line ends normalised, see the
/// module), read in chunks (never whole).
pub fn of_reader(mut reader: impl Read) -> io::Result<u64> {
    let mut digest = Normalised::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => digest.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(digest.finish())
}

/// The fingerprint of the file at `path` (its normalised bytes, streamed).
pub fn of_file(path: &Path) -> io::Result<u64> {
    of_reader(File::open(path)?)
}

/// The fingerprint of single-bet mode: the bet's canonical text and the agency id.
pub fn of_bet(agency: AgencyId, bet: &Bet) -> u64 {
    let text = [
        agency.to_string(),
        bet.first_name.clone(),
        bet.last_name.clone(),
        bet.document.clone(),
        bet.birthdate.format("%Y-%m-%d").to_string(),
        bet.number.to_string(),
    ]
    .join(SEPARATOR);
    non_zero(CRC64.checksum(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn ana() -> Bet {
        Bet {
            first_name: "Ana".into(),
            last_name: "Núñez".into(),
            document: "30904465".into(),
            birthdate: NaiveDate::from_ymd_opt(1999, 3, 17).unwrap_or_default(),
            number: 7574,
        }
    }

    #[test]
    fn same_bytes_same_id_different_bytes_different_id() {
        let a = b"Ana,Nunez,30904465,1999-03-17,7574\n".repeat(5000);
        let mut b = a.clone();
        b[70_000] ^= 1;
        let id_a = of_reader(&a[..]).expect("reads");
        assert_eq!(id_a, of_reader(&a[..]).expect("reads"));
        assert_ne!(id_a, of_reader(&b[..]).expect("reads"));
        // One byte less (the final line break) is the same text; two bytes less is not.
        assert_eq!(id_a, of_reader(&a[..a.len() - 1]).expect("reads"));
        assert_ne!(id_a, of_reader(&a[..a.len() - 2]).expect("reads"));
        // Chunked streaming of an LF file ending in LF is the plain checksum of it.
        assert_eq!(id_a, non_zero(CRC64.checksum(&a)));
    }

    /// Reads `bytes` in pieces of `piece` bytes (to split CRLFs across reads).
    struct Pieces<'a> {
        bytes: &'a [u8],
        piece: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn crlf_and_lf_with_or_without_a_final_line_break_are_one_upload() {
        let lf = "Ana,Paz,1,1990-01-01,1\nBea,\"Paz\r, Ruiz\",2,1990-01-01,2\n\nCid,Paz,3,1990-01-01,3\n"
            .repeat(3000);
        let crlf = lf.replace('\n', "\r\n");
        let lf_open = &lf[..lf.len() - 1];
        let crlf_open = &crlf[..crlf.len() - 2];
        // One piece less than a CRLF apart is enough to split some of them.
        let of = |text: &str, piece: usize| {
            of_reader(Pieces {
                bytes: text.as_bytes(),
                piece,
            })
            .expect("reads")
        };
        let id = of_reader(lf.as_bytes()).expect("reads");
        for piece in [1, 2, 3, 7, 64, CHUNK, usize::MAX] {
            for text in [lf.as_str(), crlf.as_str(), lf_open, crlf_open] {
                assert_eq!(of(text, piece), id, "piece {piece}");
            }
        }
        // A lone CR is a byte like any other, and any changed byte changes the id.
        assert_ne!(of(&lf.replacen('\n', "\r", 1), 7), id);
        assert_ne!(of(&crlf.replacen("\r\n", "\r\r\n", 1), 7), id);
        assert_ne!(of(&crlf.replacen("Bea", "Bee", 1), 7), id);
        assert_ne!(of(&format!("{lf}\n"), 7), id, "an extra blank line");
        assert_ne!(of(&format!("{crlf}\r"), 7), id, "a trailing CR");
        assert_ne!(of(&lf[1..], 7), id);
        // A file of only a line break is not the empty file.
        assert_ne!(of("\n", 1), of("", 1));
        assert_eq!(of("\r\n", 1), of("\n", 1));
        assert_eq!(of("x", 1), of("x\r\n", 1));
    }

    #[test]
    fn a_file_and_its_bytes_agree() {
        let path =
            std::env::temp_dir().join(format!("loteria-fingerprint-{}.csv", std::process::id()));
        let bytes = b"x,y,1,2000-01-01,1\n".repeat(10_000);
        std::fs::write(&path, &bytes).expect("write temp file");
        assert_eq!(
            of_file(&path).expect("reads"),
            of_reader(&bytes[..]).expect("reads")
        );
        let _ = std::fs::remove_file(&path);
        assert!(of_file(&path).is_err());
    }

    #[test]
    fn never_zero() {
        assert_eq!(non_zero(0), 1);
        assert_eq!(non_zero(5), 5);
        // CRC-64/XZ of nothing is 0: the empty file still gets a usable id.
        assert_eq!(CRC64.checksum(b""), 0);
        assert_eq!(of_reader(&b""[..]).expect("reads"), 1);
    }

    #[test]
    fn a_bet_id_depends_on_every_field_and_the_agency() {
        let base = of_bet(1, &ana());
        assert_eq!(base, of_bet(1, &ana()));
        assert_ne!(base, 0);
        assert_ne!(base, of_bet(2, &ana()));
        let mut other = ana();
        other.number = 7575;
        assert_ne!(base, of_bet(1, &other));
        let mut other = ana();
        other.first_name = "Ana ".into();
        assert_ne!(base, of_bet(1, &other));
        let mut other = ana();
        other.birthdate = NaiveDate::from_ymd_opt(1999, 3, 18).unwrap_or_default();
        assert_ne!(base, of_bet(1, &other));
    }
}
