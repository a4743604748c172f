//! Byte tests eight bytes at a time on a `u64` (SWAR), for the bets file's rows.
//! A word is loaded little-endian (`u64::from_le_bytes`): its first byte is its lowest.

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// A mask whose lowest set bit is the high bit of the first byte of `w` that
/// equals `b` (bits above it may be set spuriously): 0 when none does.
#[inline]
pub(super) fn eq(w: u64, b: u8) -> u64 {
    let x = w ^ (LOW * u64::from(b));
    x.wrapping_sub(LOW) & !x & HIGH
}

/// [`eq`] for any of the four bytes the CSV format treats specially: `,`, `"`,
/// `\r`, `\n`.
#[inline]
pub(super) fn special(w: u64) -> u64 {
    eq(w, b',') | eq(w, b'"') | eq(w, b'\r') | eq(w, b'\n')
}

/// Exactly the bytes of `w` that equal `b`: the high bit of each is set, no other bit.
#[inline]
pub(super) fn eq_exact(w: u64, b: u8) -> u64 {
    const SEVEN: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let x = w ^ (LOW * u64::from(b));
    !((((x & SEVEN) + SEVEN) | x) | SEVEN)
}

/// How many bytes of `bytes` equal `b`.
pub(super) fn count(bytes: &[u8], b: u8) -> u32 {
    let mut words = bytes.chunks_exact(8);
    let mut n = 0;
    for word in words.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        n += eq_exact(u64::from_le_bytes(w), b).count_ones();
    }
    words
        .remainder()
        .iter()
        .fold(n, |n, &c| n + u32::from(c == b))
}

/// The index of the first byte at or after `from` that `mask` (one of these tests)
/// flags, eight bytes at a time.
#[inline]
pub(super) fn find(bytes: &[u8], from: usize, mask: impl Fn(u64) -> u64) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let m = mask(u64::from_le_bytes(w));
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = bytes.get(i..)?;
    let m = mask(tail(rest));
    let k = (m.trailing_zeros() / 8) as usize;
    (m != 0 && k < rest.len()).then_some(i + k)
}

/// The word of the (at most 8) bytes of `rest`, padded with zero bytes, which no test
/// here flags. Built byte by byte: a short copy followed by a word load would stall on
/// store forwarding.
#[inline]
pub(super) fn tail(rest: &[u8]) -> u64 {
    rest.iter()
        .take(8)
        .enumerate()
        .fold(0, |w, (i, &b)| w | u64::from(b) << (8 * i))
}
