//! The commit journal's on-disk format (`docs/STORAGE.md` §2): the file header, the
//! records and their codec, and the scan that finds where the valid records end.
//!
//! Every constant of the format is defined here, once, and pinned by the unit tests
//! below (including the worked example of `docs/STORAGE.md` §2.3).

use std::io::{self, Read};

use crate::bet::AgencyId;

use super::UploadId;

/// The journal's magic, the first 8 bytes of the file.
pub(crate) const MAGIC: [u8; 8] = *b"LOTJRNL\0";
/// The format version, bytes 8..12 of the file.
pub(crate) const VERSION: u32 = 1;
/// The length of the file header: magic, version, reserved `u32` 0.
pub(crate) const HEADER_LEN: u64 = 16;
/// The length of a record's frame before its payload: `len: u32`, `crc: u32`.
pub(crate) const FRAME_LEN: usize = 8;
/// The largest `len` (type + body) a record may have: 1 MiB.
pub(crate) const MAX_RECORD_LEN: u32 = 1 << 20;

/// Record type: a commit of batches.
pub(crate) const TYPE_COMMIT: u8 = 1;
/// Record type: an agency's `FIN`.
pub(crate) const TYPE_FIN: u8 = 2;
/// Record type: the draw.
pub(crate) const TYPE_DRAW: u8 = 3;
/// Record type: bets of a journal-less bets file adopted as committed.
pub(crate) const TYPE_ADOPT: u8 = 4;

/// Bytes of one COMMIT entry: agency u32, upload u64, seq u64, line u64, count u32,
/// digest u32.
pub(crate) const COMMIT_ENTRY_LEN: usize = 4 + 8 + 8 + 8 + 4 + 4;
/// Bytes of a COMMIT body before its entries: end u64, n u16.
pub(crate) const COMMIT_FIXED_LEN: usize = 8 + 2;
/// Bytes of one ADOPT entry: agency u32, bets u64.
pub(crate) const ADOPT_ENTRY_LEN: usize = 4 + 8;
/// Bytes of an ADOPT body before its entries: end u64, n u32.
pub(crate) const ADOPT_FIXED_LEN: usize = 8 + 4;
/// Bytes of a FIN body: agency u32.
pub(crate) const FIN_BODY_LEN: usize = 4;
/// Bytes of a DRAW body: winning_number u16, bets u64.
pub(crate) const DRAW_BODY_LEN: usize = 2 + 8;

/// The most batches one COMMIT record holds (bounded by [`MAX_RECORD_LEN`]; also
/// below `u16::MAX`).
pub(crate) const MAX_COMMIT_ENTRIES: usize =
    (MAX_RECORD_LEN as usize - 1 - COMMIT_FIXED_LEN) / COMMIT_ENTRY_LEN;
/// The most agencies one ADOPT record holds (bounded by [`MAX_RECORD_LEN`]).
pub(crate) const MAX_ADOPT_ENTRIES: usize =
    (MAX_RECORD_LEN as usize - 1 - ADOPT_FIXED_LEN) / ADOPT_ENTRY_LEN;

/// CRC-32C (Castagnoli), the checksum of records and of batch digests. Slice-by-16
/// tables (16 KiB): the same checksum as the byte-wise table, several times faster,
/// which recovery's check of the whole committed prefix wants.
pub(crate) const CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// One batch of a COMMIT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitEntry {
    pub(crate) agency: AgencyId,
    pub(crate) upload: UploadId,
    pub(crate) seq: u64,
    /// The 1-based line of the agency file holding the batch's last bet (0: no file).
    pub(crate) line: u64,
    pub(crate) count: u32,
    pub(crate) digest: u32,
}

/// One agency of an ADOPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdoptEntry {
    pub(crate) agency: AgencyId,
    pub(crate) bets: u64,
}

/// A journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// Batches committed; the bets file's committed end is `end` after it.
    Commit { end: u64, entries: Vec<CommitEntry> },
    /// An agency's `FIN`.
    Fin { agency: AgencyId },
    /// The draw.
    Draw { winning_number: u16, bets: u64 },
    /// Rows of a journal-less bets file, up to `end`, adopted as committed.
    Adopt { end: u64, entries: Vec<AdoptEntry> },
}

/// The file header: magic, version, reserved 0.
pub(crate) fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_be_bytes());
    h
}

/// Checks a file header read from the journal (`bytes` is what could be read of its
/// first [`HEADER_LEN`] bytes); the error says what is wrong.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < HEADER_LEN as usize {
        return Err(format!(
            "the journal is {} bytes long, shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if bytes[..8] != MAGIC {
        return Err(format!(
            "not a lottery journal: magic is {:02x?}, expected {:02x?} (\"LOTJRNL\\0\")",
            &bytes[..8],
            MAGIC
        ));
    }
    let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(format!(
            "journal format version {version} is not supported (this server reads version {VERSION})"
        ));
    }
    if bytes[12..16] != [0, 0, 0, 0] {
        return Err(format!(
            "journal header's reserved field is {:02x?}, expected zeros",
            &bytes[12..16]
        ));
    }
    Ok(())
}

impl Record {
    /// Appends the whole record (frame and payload) to `out`. Fails, leaving `out` as
    /// it was, if the record would exceed [`MAX_RECORD_LEN`].
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_LEN]);
        match self {
            Record::Commit { end, entries } => {
                if entries.len() > MAX_COMMIT_ENTRIES {
                    out.truncate(start);
                    return Err(format!(
                        "a commit holds at most {MAX_COMMIT_ENTRIES} batches, not {}",
                        entries.len()
                    ));
                }
                out.push(TYPE_COMMIT);
                out.extend_from_slice(&end.to_be_bytes());
                // At most MAX_COMMIT_ENTRIES (< u16::MAX), checked above.
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for e in entries {
                    out.extend_from_slice(&e.agency.to_be_bytes());
                    out.extend_from_slice(&e.upload.to_be_bytes());
                    out.extend_from_slice(&e.seq.to_be_bytes());
                    out.extend_from_slice(&e.line.to_be_bytes());
                    out.extend_from_slice(&e.count.to_be_bytes());
                    out.extend_from_slice(&e.digest.to_be_bytes());
                }
            }
            Record::Fin { agency } => {
                out.push(TYPE_FIN);
                out.extend_from_slice(&agency.to_be_bytes());
            }
            Record::Draw {
                winning_number,
                bets,
            } => {
                out.push(TYPE_DRAW);
                out.extend_from_slice(&winning_number.to_be_bytes());
                out.extend_from_slice(&bets.to_be_bytes());
            }
            Record::Adopt { end, entries } => {
                if entries.len() > MAX_ADOPT_ENTRIES {
                    out.truncate(start);
                    return Err(format!(
                        "an adopt record holds at most {MAX_ADOPT_ENTRIES} agencies, not {}",
                        entries.len()
                    ));
                }
                out.push(TYPE_ADOPT);
                out.extend_from_slice(&end.to_be_bytes());
                // At most MAX_ADOPT_ENTRIES (< u32::MAX), checked above.
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    out.extend_from_slice(&e.agency.to_be_bytes());
                    out.extend_from_slice(&e.bets.to_be_bytes());
                }
            }
        }
        let payload = &out[start + FRAME_LEN..];
        // Bounded by MAX_RECORD_LEN through the entry limits above.
        let len = payload.len() as u32;
        let crc = CRC32C.checksum(payload);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// Decodes a payload (type + body) whose checksum is right.
    fn decode(payload: &[u8]) -> Result<Record, String> {
        let (&kind, body) = payload
            .split_first()
            .ok_or_else(|| "empty record".to_string())?;
        let mut b = Body(body);
        let exact = |name: &str, want: usize| {
            if body.len() == want {
                Ok(())
            } else {
                Err(format!(
                    "{name} record body is {} bytes, expected {want}",
                    body.len()
                ))
            }
        };
        let short = || "record body is cut short".to_string();
        let record = match kind {
            TYPE_COMMIT => {
                let end = b.u64().ok_or_else(short)?;
                let n = usize::from(b.u16().ok_or_else(short)?);
                exact("COMMIT", COMMIT_FIXED_LEN + n * COMMIT_ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(CommitEntry {
                        agency: b.u32().ok_or_else(short)?,
                        upload: b.u64().ok_or_else(short)?,
                        seq: b.u64().ok_or_else(short)?,
                        line: b.u64().ok_or_else(short)?,
                        count: b.u32().ok_or_else(short)?,
                        digest: b.u32().ok_or_else(short)?,
                    });
                }
                Record::Commit { end, entries }
            }
            TYPE_FIN => {
                exact("FIN", FIN_BODY_LEN)?;
                Record::Fin {
                    agency: b.u32().ok_or_else(short)?,
                }
            }
            TYPE_DRAW => {
                exact("DRAW", DRAW_BODY_LEN)?;
                Record::Draw {
                    winning_number: b.u16().ok_or_else(short)?,
                    bets: b.u64().ok_or_else(short)?,
                }
            }
            TYPE_ADOPT => {
                let end = b.u64().ok_or_else(short)?;
                let n = b.u32().ok_or_else(short)? as usize;
                // `n` is checked against the body's real size before it sizes anything.
                let want = n
                    .checked_mul(ADOPT_ENTRY_LEN)
                    .and_then(|x| x.checked_add(ADOPT_FIXED_LEN))
                    .ok_or_else(|| format!("ADOPT record claims {n} entries"))?;
                exact("ADOPT", want)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(AdoptEntry {
                        agency: b.u32().ok_or_else(short)?,
                        bets: b.u64().ok_or_else(short)?,
                    });
                }
                Record::Adopt { end, entries }
            }
            other => return Err(format!("unknown record type {other}")),
        };
        Ok(record)
    }
}

/// A cursor over a record body.
struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
}

/// Where the valid records of a journal end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The journal's valid length: header plus every complete, checksummed record.
    pub(crate) valid_len: u64,
    /// Why the bytes after `valid_len` (if any) are a torn tail.
    pub(crate) torn: Option<String>,
}

/// Why a scan stopped without a result.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// Reading failed.
    Io(io::Error),
    /// Damage that is not a torn tail, at a byte offset of the journal.
    Corrupt { offset: u64, reason: String },
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> ScanError {
        ScanError::Io(e)
    }
}

/// Reads the records that follow the header (the reader is positioned just after it)
/// of a journal `file_len` bytes long, calling `apply` with each record and its byte
/// offset; `apply` may reject a record (it becomes [`ScanError::Corrupt`]).
///
/// The first record that is cut short, has `len` 0 or above [`MAX_RECORD_LEN`], or
/// fails its checksum ends the scan: it and everything after it is the torn tail
/// ([`Scan::torn`]). Exception: a complete record with a bad checksum followed by more
/// bytes is damage, not a torn append, and so is a checksummed record that does not
/// decode.
pub(crate) fn scan<R: Read>(
    reader: &mut R,
    file_len: u64,
    mut apply: impl FnMut(u64, Record) -> Result<(), String>,
) -> Result<Scan, ScanError> {
    let mut offset = HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let torn = |reason: String| {
            Ok(Scan {
                valid_len: offset,
                torn: Some(reason),
            })
        };
        let mut frame = [0u8; FRAME_LEN];
        let got = read_full(reader, &mut frame)?;
        if got == 0 {
            return Ok(Scan {
                valid_len: offset,
                torn: None,
            });
        }
        if got < FRAME_LEN {
            return torn(format!(
                "record at byte {offset} is cut short ({got} of its {FRAME_LEN} frame bytes)"
            ));
        }
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len == 0 || len > MAX_RECORD_LEN {
            return torn(format!(
                "record at byte {offset} has length {len}, outside 1..={MAX_RECORD_LEN}"
            ));
        }
        // Bounded above, so allocating it is safe.
        payload.resize(len as usize, 0);
        let got = read_full(reader, &mut payload)?;
        if got < payload.len() {
            return torn(format!(
                "record at byte {offset} is cut short ({got} of its {len} bytes)"
            ));
        }
        let next = offset + FRAME_LEN as u64 + u64::from(len);
        if CRC32C.checksum(&payload) != crc {
            if next < file_len {
                return Err(ScanError::Corrupt {
                    offset,
                    reason: format!(
                        "record fails its checksum but {} more bytes follow it: the journal is \
                         damaged (not a torn write); refusing to drop committed records",
                        file_len - next
                    ),
                });
            }
            return torn(format!("record at byte {offset} fails its checksum"));
        }
        let record =
            Record::decode(&payload).map_err(|reason| ScanError::Corrupt { offset, reason })?;
        apply(offset, record).map_err(|reason| ScanError::Corrupt { offset, reason })?;
        offset = next;
    }
}

/// Reads until `buf` is full or the end of the input; returns how many bytes were read.
pub(crate) fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn encoded(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        record.encode(&mut out).expect("encode");
        out
    }

    fn example_commit() -> Record {
        Record::Commit {
            end: 100,
            entries: vec![CommitEntry {
                agency: 1,
                upload: 0x0102_0304_0506_0708,
                seq: 1,
                line: 3,
                count: 2,
                digest: 0xDEAD_BEEF,
            }],
        }
    }

    fn samples() -> Vec<Record> {
        vec![
            example_commit(),
            Record::Commit {
                end: 7,
                entries: vec![],
            },
            Record::Commit {
                end: u64::MAX,
                entries: (0..5)
                    .map(|i| CommitEntry {
                        agency: i,
                        upload: u64::MAX - u64::from(i),
                        seq: u64::from(i) * 3,
                        line: u64::MAX - 1 - u64::from(i),
                        count: u32::MAX,
                        digest: i,
                    })
                    .collect(),
            },
            Record::Fin { agency: 3 },
            Record::Draw {
                winning_number: 7574,
                bets: 3,
            },
            Record::Adopt {
                end: 50,
                entries: vec![AdoptEntry { agency: 1, bets: 2 }],
            },
        ]
    }

    /// Scans `records` (the bytes after the header) as a journal of that length.
    fn scan_bytes(records: &[u8]) -> Result<(Scan, Vec<Record>), ScanError> {
        let mut got = Vec::new();
        let scan = scan(
            &mut &records[..],
            HEADER_LEN + records.len() as u64,
            |_, r| {
                got.push(r);
                Ok(())
            },
        )?;
        Ok((scan, got))
    }

    #[test]
    fn constants_are_pinned() {
        assert_eq!(&MAGIC, b"LOTJRNL\0");
        assert_eq!(VERSION, 1);
        assert_eq!(HEADER_LEN, 16);
        assert_eq!(FRAME_LEN, 8);
        assert_eq!(MAX_RECORD_LEN, 1_048_576);
        assert_eq!((TYPE_COMMIT, TYPE_FIN, TYPE_DRAW, TYPE_ADOPT), (1, 2, 3, 4));
        assert_eq!(COMMIT_ENTRY_LEN, 36);
        assert_eq!(COMMIT_FIXED_LEN, 10);
        assert_eq!(ADOPT_ENTRY_LEN, 12);
        assert_eq!(MAX_COMMIT_ENTRIES, 29_126);
        // The largest COMMIT fits the bound, one more entry does not.
        let payload = |n: usize| 1 + COMMIT_FIXED_LEN + n * COMMIT_ENTRY_LEN;
        assert!(payload(MAX_COMMIT_ENTRIES) <= MAX_RECORD_LEN as usize);
        assert!(payload(MAX_COMMIT_ENTRIES + 1) > MAX_RECORD_LEN as usize);
        assert!(MAX_COMMIT_ENTRIES < usize::from(u16::MAX));
        assert_eq!(MAX_ADOPT_ENTRIES, 87_380);
        // CRC-32C's check value.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        assert_eq!(
            hex(&header()),
            "4c 4f 54 4a 52 4e 4c 00 00 00 00 01 00 00 00 00"
        );
    }

    #[test]
    fn worked_examples_of_storage_md() {
        assert_eq!(
            hex(&encoded(&example_commit())),
            "00 00 00 2f c1 0b 3e e7 01 00 00 00 00 00 00 00 64 00 01 00 00 00 01 \
             01 02 03 04 05 06 07 08 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 03 \
             00 00 00 02 de ad be ef"
        );
        assert_eq!(
            hex(&encoded(&Record::Fin { agency: 3 })),
            "00 00 00 05 26 00 5a 99 02 00 00 00 03"
        );
        assert_eq!(
            hex(&encoded(&Record::Draw {
                winning_number: 7574,
                bets: 3
            })),
            "00 00 00 0b c6 96 96 e8 03 1d 96 00 00 00 00 00 00 00 03"
        );
        assert_eq!(
            hex(&encoded(&Record::Adopt {
                end: 50,
                entries: vec![AdoptEntry { agency: 1, bets: 2 }]
            })),
            "00 00 00 19 0e a0 78 2e 04 00 00 00 00 00 00 00 32 \
             00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 02"
        );
    }

    #[test]
    fn header_check_names_what_is_wrong() {
        assert_eq!(check_header(&header()), Ok(()));
        assert!(
            check_header(&header()[..15])
                .unwrap_err()
                .contains("shorter")
        );
        let mut h = header();
        h[0] = b'X';
        assert!(
            check_header(&h)
                .unwrap_err()
                .contains("not a lottery journal")
        );
        let mut h = header();
        h[11] = 2;
        assert!(check_header(&h).unwrap_err().contains("version 2"));
        let mut h = header();
        h[15] = 1;
        assert!(check_header(&h).unwrap_err().contains("reserved"));
    }

    #[test]
    fn records_round_trip() {
        let mut bytes = Vec::new();
        for r in samples() {
            r.encode(&mut bytes).expect("encode");
        }
        let (scan, got) = scan_bytes(&bytes).expect("scan");
        assert_eq!(got, samples());
        assert_eq!(
            scan,
            Scan {
                valid_len: HEADER_LEN + bytes.len() as u64,
                torn: None
            }
        );
    }

    #[test]
    fn every_cut_of_a_record_is_a_torn_tail() {
        for last in samples() {
            let mut bytes = encoded(&Record::Fin { agency: 9 });
            let whole = bytes.len();
            last.encode(&mut bytes).expect("encode");
            for cut in whole..bytes.len() {
                let (scan, got) = scan_bytes(&bytes[..cut]).expect("scan");
                assert_eq!(got, vec![Record::Fin { agency: 9 }], "cut {cut}");
                assert_eq!(scan.valid_len, HEADER_LEN + whole as u64, "cut {cut}");
                assert_eq!(scan.torn.is_some(), cut > whole, "cut {cut}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_in_the_last_record_is_never_accepted() {
        // A flip in the payload or checksum is a bad checksum at the end: a torn tail.
        // A flip in `len` may make the record look shorter with bytes after it: damage.
        let (mut torn, mut damaged) = (0, 0);
        for last in samples() {
            let record = encoded(&last);
            for i in 0..record.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bytes = record.clone();
                    bytes[i] ^= bit;
                    match scan_bytes(&bytes) {
                        Ok((scan, got)) => {
                            assert!(got.is_empty(), "byte {i}");
                            assert_eq!(scan.valid_len, HEADER_LEN, "byte {i}");
                            assert!(scan.torn.is_some(), "byte {i}");
                            torn += 1;
                        }
                        Err(ScanError::Corrupt { offset, .. }) => {
                            assert!(i < 4, "byte {i}: only a flip in len looks like damage");
                            assert_eq!(offset, HEADER_LEN);
                            damaged += 1;
                        }
                        Err(e) => panic!("byte {i}: {e:?}"),
                    }
                }
            }
        }
        assert!(torn > 0 && damaged > 0);
    }

    #[test]
    fn a_zero_filled_tail_is_torn() {
        let mut bytes = encoded(&Record::Fin { agency: 1 });
        let whole = bytes.len();
        bytes.extend_from_slice(&[0; 64]);
        let (scan, got) = scan_bytes(&bytes).expect("scan");
        assert_eq!(got.len(), 1);
        assert_eq!(scan.valid_len, HEADER_LEN + whole as u64);
        assert!(scan.torn.expect("torn").contains("length 0"));
    }

    #[test]
    fn an_oversized_length_is_torn_without_allocating() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        bytes.extend_from_slice(&[1; 16]);
        let (scan, _) = scan_bytes(&bytes).expect("scan");
        assert!(scan.torn.expect("torn").contains("outside"));
    }

    #[test]
    fn a_bad_checksum_followed_by_records_is_damage() {
        let mut bytes = encoded(&Record::Fin { agency: 1 });
        bytes[10] ^= 1;
        Record::Fin { agency: 2 }
            .encode(&mut bytes)
            .expect("encode");
        match scan_bytes(&bytes) {
            Err(ScanError::Corrupt { offset, reason }) => {
                assert_eq!(offset, HEADER_LEN);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected damage, got {other:?}"),
        }
    }

    #[test]
    fn checksummed_nonsense_is_corrupt_not_torn() {
        fn framed(payload: &[u8]) -> Vec<u8> {
            let mut out = (payload.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&CRC32C.checksum(payload).to_be_bytes());
            out.extend_from_slice(payload);
            out
        }
        for (payload, want) in [
            (&[9u8, 0, 0][..], "unknown record type 9"),
            (&[TYPE_FIN, 0, 0, 0][..], "FIN record body is 3 bytes"),
            (&[TYPE_DRAW, 0][..], "DRAW record body is 1 bytes"),
            (
                &[TYPE_COMMIT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1][..],
                "COMMIT record body is 10 bytes, expected 46",
            ),
            (
                &[TYPE_ADOPT, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..],
                "ADOPT record body is 12 bytes",
            ),
        ] {
            match scan_bytes(&framed(payload)) {
                Err(ScanError::Corrupt { reason, .. }) => {
                    assert!(reason.contains(want), "{reason} vs {want}")
                }
                other => panic!("{want}: got {other:?}"),
            }
        }
    }

    #[test]
    fn too_big_records_are_refused_before_writing() {
        let entry = CommitEntry {
            agency: 1,
            upload: 1,
            seq: 1,
            line: 1,
            count: 1,
            digest: 1,
        };
        let mut out = vec![7];
        let err = Record::Commit {
            end: 0,
            entries: vec![entry; MAX_COMMIT_ENTRIES + 1],
        }
        .encode(&mut out)
        .expect_err("too big");
        assert!(err.contains("at most 29126"), "{err}");
        assert_eq!(out, vec![7]);
        Record::Commit {
            end: 0,
            entries: vec![entry; MAX_COMMIT_ENTRIES],
        }
        .encode(&mut out)
        .expect("the largest commit fits");
        assert!(out.len() - 1 - FRAME_LEN <= MAX_RECORD_LEN as usize);
        let (_, got) = scan_bytes(&out[1..]).expect("scan");
        assert_eq!(got.len(), 1);
    }
}
