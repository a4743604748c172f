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

/// CRC-64/XZ by the `crc64fast` crate: carry-less multiplication (PCLMULQDQ on
/// x86-64, PMULL on AArch64) where the CPU has it, chosen at run time, else a
/// 16-byte-at-a-time table; the same values as `crc`'s `CRC_64_XZ` (pinned by the
/// tests against it).
fn crc64(bytes: &[u8]) -> u64 {
    let mut digest = crc64fast::Digest::new();
    digest.write(bytes);
    digest.sum64()
}

/// Bytes read at a time while fingerprinting a file: large enough that the read
/// calls cost nothing next to the CRC, small next to the client's memory budget.
const CHUNK: usize = 256 * 1024;

/// Separates the fields of a bet's canonical text: a control character, which a valid
/// bet's names never hold (and documents, dates and numbers cannot), so the text is
/// unambiguous.
const SEPARATOR: &str = "\u{1f}";

/// Maps the reserved id `0` to `1`.
fn non_zero(crc: u64) -> u64 {
    if crc == 0 { 1 } else { crc }
}

/// The index of the first CR in `bytes` (a vectorized search).
fn find_cr(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\r', bytes)
}

/// A CRC-64 digest of text with its line ends normalised, fed in pieces: a CR that
/// ends one piece is held until the next piece shows whether an LF follows it.
struct Normalised {
    digest: crc64fast::Digest,
    /// The last piece ended with a CR not yet hashed.
    pending_cr: bool,
    /// The last byte hashed (`None`: nothing yet).
    last: Option<u8>,
}

impl Normalised {
    fn new() -> Normalised {
        Normalised {
            digest: crc64fast::Digest::new(),
            pending_cr: false,
            last: None,
        }
    }

    fn hash(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.digest.write(bytes);
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
        // Every run of bytes up to a CR is hashed as it is; a CRLF's CR is dropped
        // (its LF starts the next run), a lone CR stays.
        while let Some(cr) = find_cr(bytes) {
            match bytes.get(cr + 1) {
                Some(b'\n') => {
                    self.hash(&bytes[..cr]);
                    bytes = &bytes[cr + 1..];
                }
                Some(_) => {
                    self.hash(&bytes[..=cr]);
                    bytes = &bytes[cr + 1..];
                }
                None => {
                    self.hash(&bytes[..cr]);
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
        non_zero(self.digest.sum64())
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
    non_zero(crc64(text.as_bytes()))
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
        assert_eq!(id_a, non_zero(crc64(&a)));
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

    /// The fingerprint as first written (one-table CRC, byte-by-byte CR search, 64 KiB
    /// reads): every input must keep the id it had, since stores hold it.
    fn reference(bytes: &[u8], piece: usize) -> u64 {
        const SLOW: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
        let mut pending_cr = false;
        let mut state = (SLOW.digest(), None::<u8>);
        let hash = |state: &mut (crc::Digest<'_, u64>, Option<u8>), b: &[u8]| {
            if let Some(&l) = b.last() {
                state.0.update(b);
                state.1 = Some(l);
            }
        };
        for mut bytes in bytes.chunks(piece.max(1)) {
            if pending_cr {
                pending_cr = false;
                if bytes[0] == b'\n' {
                    hash(&mut state, b"\n");
                    bytes = &bytes[1..];
                } else {
                    hash(&mut state, b"\r");
                }
            }
            while let Some(cr) = bytes.iter().position(|&b| b == b'\r') {
                hash(&mut state, &bytes[..cr]);
                match bytes.get(cr + 1) {
                    Some(b'\n') => {
                        hash(&mut state, b"\n");
                        bytes = &bytes[cr + 2..];
                    }
                    Some(_) => {
                        hash(&mut state, b"\r");
                        bytes = &bytes[cr + 1..];
                    }
                    None => {
                        pending_cr = true;
                        bytes = &[];
                    }
                }
            }
            hash(&mut state, bytes);
        }
        if pending_cr {
            hash(&mut state, b"\r");
        }
        if state.1.is_some_and(|l| l != b'\n') {
            hash(&mut state, b"\n");
        }
        non_zero(state.0.finalize())
    }

    /// Hostile texts: CRs and LFs in every arrangement, at the ends, and around the
    /// scan blocks' and the read chunks' boundaries.
    fn hostile() -> Vec<Vec<u8>> {
        let mut texts: Vec<Vec<u8>> = [
            &b""[..],
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\r",
            b"\r\r",
            b"\r\r\n",
            b"\r\n\r",
            b"\n\n\r\n\r",
            b"x",
            b"x\r",
            b"x\r\n\r\n",
            b"\xEF\xBB\xBFAna,Paz,1,1990-01-01,1\r\n",
            b"Ana,Paz,1,1990-01-01,1\r\nBea,\"Paz\r, Ruiz\",2,1990-01-01,2\r\r\n",
        ]
        .iter()
        .map(|t| t.to_vec())
        .collect();
        for at in [
            15,
            16,
            17,
            31,
            32,
            33,
            63,
            64,
            65,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
        ] {
            for tail in [&b"\r"[..], b"\r\n", b"\n", b"\r\r", b"\rx", b""] {
                let mut text = vec![b'a'; at];
                text.extend_from_slice(tail);
                texts.push(text.clone());
                text.extend_from_slice(b"more\r\n");
                texts.push(text);
            }
        }
        // Pseudo-random mixes dense in CR and LF (a fixed LCG: reproducible).
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in [5, 31, 33, 100, 1000, 70_000, CHUNK + 77] {
            let text = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    [b'\r', b'\n', b'a', b'\r', b'x', b',', 0xC3][(state >> 33) as usize % 7]
                })
                .collect();
            texts.push(text);
        }
        texts
    }

    #[test]
    fn every_input_keeps_the_id_of_the_first_implementation() {
        for text in hostile() {
            let want = reference(&text, CHUNK_BEFORE);
            for piece in [1, 2, 3, 31, 32, 33, 4096, CHUNK_BEFORE, CHUNK, usize::MAX] {
                assert_eq!(
                    reference(&text, piece),
                    want,
                    "the reference is piece-blind"
                );
                let got = of_reader(Pieces {
                    bytes: &text,
                    piece,
                })
                .expect("reads");
                assert_eq!(got, want, "{} bytes in pieces of {piece}", text.len());
            }
        }
    }

    /// The first implementation's read size.
    const CHUNK_BEFORE: usize = 64 * 1024;

    proptest::proptest! {
        #[test]
        fn arbitrary_line_ends_keep_their_id(
            text in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'a', b'b']), 0..300),
            piece in 1usize..70,
        ) {
            let got = of_reader(Pieces { bytes: &text, piece }).expect("reads");
            proptest::prop_assert_eq!(got, reference(&text, piece));
        }
    }

    /// The best MB/s of five runs of `f` over `bytes` bytes (the machine is shared).
    fn mb_per_s(bytes: usize, mut f: impl FnMut() -> u64) -> f64 {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                std::hint::black_box(f());
                bytes as f64 / 1e6 / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
    }

    /// Prints the fingerprint's speed over LF and CRLF texts, old and new:
    /// `cargo test --release --lib fingerprint::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: prints numbers"]
    fn speed() {
        let lf = b"Santiago Lionel,Lorca,30904465,1999-03-17,2201\n".repeat(1_000_000);
        let crlf = b"Santiago Lionel,Lorca,30904465,1999-03-17,2201\r\n".repeat(1_000_000);
        for (name, text) in [("LF", &lf), ("CRLF", &crlf)] {
            let before = mb_per_s(text.len(), || reference(text, CHUNK_BEFORE));
            let now = mb_per_s(text.len(), || of_reader(&text[..]).unwrap_or(0));
            println!("{name}: before {before:.0} MB/s, now {now:.0} MB/s");
        }
        println!(
            "CRC-64 alone: {:.0} MB/s, CR scan alone: {:.0} MB/s",
            mb_per_s(lf.len(), || crc64(&lf)),
            mb_per_s(lf.len(), || find_cr(&lf).map_or(0, |i| i as u64))
        );
        let path = std::env::temp_dir().join(format!(
            "loteria-fingerprint-speed-{}.csv",
            std::process::id()
        ));
        std::fs::write(&path, &lf).expect("write temp file");
        let file = mb_per_s(lf.len(), || of_file(&path).unwrap_or(0));
        let _ = std::fs::remove_file(&path);
        println!("of_file (page cache): {file:.0} MB/s");
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

    /// The `crc` crate's CRC-64/XZ, the fingerprint's first implementation.
    const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

    #[test]
    fn the_fast_crc_is_the_crc_crates_crc64_xz() {
        // Every length up to a few SIMD blocks, and long ones, at every alignment
        // (a fixed LCG: reproducible).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let bytes: Vec<u8> = (0..70_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        for start in 0..16 {
            for len in (0..300).chain([1000, 4095, 4096, 4097, 65_536]) {
                let piece = &bytes[start..start + len];
                assert_eq!(
                    crc64(piece),
                    CRC64.checksum(piece),
                    "start {start} len {len}"
                );
            }
        }
        let mut digest = crc64fast::Digest::new();
        for piece in bytes.chunks(777) {
            digest.write(piece);
        }
        assert_eq!(digest.sum64(), CRC64.checksum(&bytes));
    }

    #[test]
    fn never_zero() {
        assert_eq!(non_zero(0), 1);
        assert_eq!(non_zero(5), 5);
        // CRC-64/XZ of nothing is 0: the empty file still gets a usable id.
        assert_eq!(crc64(b""), 0);
        // The catalogue's check value of CRC-64/XZ.
        assert_eq!(crc64(b"123456789"), 0x995d_c9bb_df19_39fa);
        assert_eq!(
            of_reader(&b"123456789\r\n"[..]).expect("reads"),
            crc64(b"123456789\n")
        );
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
