//! The upload id: a fingerprint of what the agency uploads.
//!
//! The server keys an agency's stored bets by `(agency, upload)`; a restarted client
//! with the same file computes the same id and so resumes its upload instead of
//! starting another. The fingerprint is CRC-64/XZ: cheap, stable across builds and
//! platforms, and good enough to tell two different files apart (it is an identity,
//! not a security check). `0` is reserved (the server uses it for bets it adopted
//! without an upload id), so a CRC of `0` becomes `1`.

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

/// The fingerprint of everything `reader` yields, read in chunks (never whole).
pub fn of_reader(mut reader: impl Read) -> io::Result<u64> {
    let mut digest = CRC64.digest();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => digest.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(non_zero(digest.finalize()))
}

/// The fingerprint of the file at `path` (its bytes, streamed).
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
        let a = b"Ana,Nunez,30904465,1999-03-17,7574\r\n".repeat(5000);
        let mut b = a.clone();
        b[70_000] ^= 1;
        let id_a = of_reader(&a[..]).expect("reads");
        assert_eq!(id_a, of_reader(&a[..]).expect("reads"));
        assert_ne!(id_a, of_reader(&b[..]).expect("reads"));
        assert_ne!(id_a, of_reader(&a[..a.len() - 1]).expect("reads"));
        // Chunked streaming gives the plain checksum of the whole.
        assert_eq!(id_a, non_zero(CRC64.checksum(&a)));
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
