//! A line's bytes classified many at a time, for the JSON checks (`json.rs`, `compact.rs`):
//! bitmaps of its quotes, colons and commas, and whether it has escapes, control characters
//! or non-ASCII bytes, 64 bytes at a time with SSE2 (every x86_64 CPU), AVX2 where the CPU
//! has it, or integer arithmetic on eight bytes at a time (SWAR) elsewhere; and the prefix
//! xor that turns a quote bitmap into the bytes inside strings.
//!
//! Pure functions, called on the region thread. Every intrinsic and every `target_feature`
//! function of the tagger is here; the one caller that enables features for a whole check is
//! `compact::compact_avx2`, which runs only after the CPU was seen to have them.

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

/// High bit set in exactly the bytes of `x` equal to `b` (no carries cross bytes).
pub(super) fn bytes_equal(x: u64, b: u8) -> u64 {
    let v = x ^ (ONES * b as u64);
    !(((v & LOW7) + LOW7) | v | LOW7)
}

/// High bit set in exactly the bytes of `x` below 0x20.
pub(super) fn bytes_control(x: u64) -> u64 {
    // A byte is below 0x20 iff its top three bits are zero.
    bytes_equal(x & (ONES * 0xE0), 0)
}

/// Bytes that end the fast run inside a string: quote, backslash, control characters.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Index of the first quote, backslash or control character in `s`, eight bytes at a time.
pub(super) fn stop_index(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(word) = s.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let hits = bytes_control(x) | bytes_equal(x, b'"') | bytes_equal(x, b'\\');
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..].iter().position(|&b| STOP[b as usize]).map(|p| i + p)
}

/// Sixty-four bytes classified: bit `k` of `quote` is set when byte `k` is a `"`, and
/// so on; `special` is non-zero when some byte is a backslash or a control character,
/// `high` when some byte is not ASCII.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Block {
    pub(super) quote: u64,
    pub(super) colon: u64,
    pub(super) comma: u64,
    pub(super) special: u64,
    pub(super) high: u64,
}

/// The classifier of this CPU: SSE2 (part of every x86_64 CPU), or plain integer
/// arithmetic elsewhere.
#[cfg(target_arch = "x86_64")]
pub(super) use classify_sse2 as classify;
#[cfg(not(target_arch = "x86_64"))]
pub(super) use classify_swar as classify;

#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn classify_sse2(block: &[u8; 64]) -> Block {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is in the x86_64 baseline, so these intrinsics are always available;
    // the loads read the 64 bytes of `block`, 16 at a time, unaligned.
    unsafe {
        let (quote, colon, comma) =
            (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b':' as i8), _mm_set1_epi8(b',' as i8));
        let (backslash, max_control) = (_mm_set1_epi8(b'\\' as i8), _mm_set1_epi8(0x1F));
        let mask = |x, byte| u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(x, byte)) as u16);
        let (mut quotes, mut colons, mut commas) = (0u64, 0u64, 0u64);
        let (mut special, mut all) = (_mm_setzero_si128(), _mm_setzero_si128());
        for k in 0..4 {
            let x = _mm_loadu_si128(block.as_ptr().add(16 * k).cast());
            quotes |= mask(x, quote) << (16 * k);
            colons |= mask(x, colon) << (16 * k);
            commas |= mask(x, comma) << (16 * k);
            // x <= 0x1F unsigned  <=>  min(x, 0x1F) == x
            let control = _mm_cmpeq_epi8(_mm_min_epu8(x, max_control), x);
            special = _mm_or_si128(special, _mm_or_si128(control, _mm_cmpeq_epi8(x, backslash)));
            all = _mm_or_si128(all, x);
        }
        Block {
            quote: quotes,
            colon: colons,
            comma: commas,
            special: _mm_movemask_epi8(special) as u64,
            high: _mm_movemask_epi8(all) as u64,
        }
    }
}

/// `classify_sse2` 32 bytes at a time.
///
/// # Safety
/// The CPU must have AVX2 (`is_x86_feature_detected!("avx2")`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn classify_avx2(block: &[u8; 64]) -> Block {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees AVX2; the two loads read the 64 bytes of `block`, 32 at a
    // time, unaligned.
    let (lo, hi) = unsafe {
        (_mm256_loadu_si256(block.as_ptr().cast()), _mm256_loadu_si256(block.as_ptr().add(32).cast()))
    };
    let mask = |x, byte: u8| {
        u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(byte as i8))) as u32)
    };
    let both = |byte| mask(lo, byte) | mask(hi, byte) << 32;
    // x <= 0x1F unsigned  <=>  min(x, 0x1F) == x
    let special = |x| {
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(x, _mm256_set1_epi8(0x1F)), x);
        _mm256_or_si256(control, _mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'\\' as i8)))
    };
    Block {
        quote: both(b'"'),
        colon: both(b':'),
        comma: both(b','),
        special: _mm256_movemask_epi8(_mm256_or_si256(special(lo), special(hi))) as u32 as u64,
        high: _mm256_movemask_epi8(_mm256_or_si256(lo, hi)) as u32 as u64,
    }
}

/// `prefix_xor` in one carry-less multiplication by all ones.
///
/// # Safety
/// The CPU must have PCLMULQDQ (`is_x86_feature_detected!("pclmulqdq")`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq")]
#[inline]
pub(super) unsafe fn prefix_xor_clmul(x: u64) -> u64 {
    use std::arch::x86_64::*;
    _mm_cvtsi128_si64(_mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0)) as u64
}

#[cfg(any(test, not(target_arch = "x86_64")))]
pub(super) fn classify_swar(block: &[u8; 64]) -> Block {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bits of the bytes of `m`, gathered into the low byte: the multiplication
    // moves byte k's bit to bit 56 + k, and no two partial products meet.
    let gather = |m: u64| (((m & HIGH) >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56;
    let mut out = Block { quote: 0, colon: 0, comma: 0, special: 0, high: 0 };
    for (k, word) in block.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        out.quote |= gather(bytes_equal(x, b'"')) << (8 * k);
        out.colon |= gather(bytes_equal(x, b':')) << (8 * k);
        out.comma |= gather(bytes_equal(x, b',')) << (8 * k);
        out.special |= bytes_control(x) | bytes_equal(x, b'\\');
        out.high |= x & HIGH;
    }
    out
}

/// Bit `i` of the result is set when an odd number of the bits `0..=i` of `x` are.
#[inline(always)]
pub(super) fn prefix_xor(mut x: u64) -> u64 {
    for k in [1, 2, 4, 8, 16, 32] {
        x ^= x << k;
    }
    x
}

/// `s` classified 64 bytes at a time, in order: in the blocks, bit `k` of the `w`-th
/// stands for byte `64 * w + k`, and there are no bits past the line's end.
#[inline(always)]
pub(super) fn blocks<C: Fn(&[u8; 64]) -> Block>(s: &[u8], classify: C) -> Blocks<'_, C> {
    Blocks { s, at: 0, classify, pad: [b' '; 64] }
}

pub(super) struct Blocks<'a, C> {
    s: &'a [u8],
    at: usize,
    classify: C,
    /// A line shorter than 64 bytes, padded with spaces (they are none of the classes).
    pad: [u8; 64],
}

impl<C: Fn(&[u8; 64]) -> Block> Iterator for Blocks<'_, C> {
    type Item = Block;

    #[inline(always)]
    fn next(&mut self) -> Option<Block> {
        let (s, at) = (self.s, self.at);
        let rest = s.len().checked_sub(at).filter(|&r| r > 0)?;
        self.at += 64;
        // Bytes of the block already seen in the previous one: the last block of a line
        // is its last 64 bytes, whose bits for those bytes are shifted out (seeing the
        // other classes' bytes twice changes nothing).
        let (block, seen) = if rest >= 64 {
            (&s[at..at + 64], 0)
        } else if s.len() >= 64 {
            (&s[s.len() - 64..], 64 - rest)
        } else {
            self.pad[..rest].copy_from_slice(s);
            (&self.pad[..], 0)
        };
        let b = (self.classify)(block.try_into().expect("64 bytes"));
        Some(Block { quote: b.quote >> seen, colon: b.colon >> seen, comma: b.comma >> seen, ..b })
    }
}

/// The first pass of the full walk: `Some(non_ascii)` with the quote bitmap of `s` in
/// `quotes`, or `None` when the line has a backslash or a control character (the walk
/// then scans strings itself).
#[inline(always)]
pub(super) fn index_quotes(
    s: &[u8],
    quotes: &mut Vec<u64>,
    classify: impl Fn(&[u8; 64]) -> Block,
) -> Option<bool> {
    quotes.clear();
    let (mut special, mut high) = (0, 0);
    for b in blocks(s, classify) {
        quotes.push(b.quote);
        special |= b.special;
        high |= b.high;
    }
    (special == 0).then_some(high != 0)
}

/// The position of the first quote at or after `from`, in a bitmap from `index_quotes`.
#[inline(always)]
pub(super) fn next_quote(quotes: &[u64], from: usize) -> Option<usize> {
    let mut w = from / 64;
    let mut bits = quotes.get(w)? & (!0u64 << (from % 64));
    while bits == 0 {
        w += 1;
        bits = *quotes.get(w)?;
    }
    Some(64 * w + bits.trailing_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every classifier this machine can run.
    pub(in crate::logtag) fn classifiers() -> Vec<fn(&[u8; 64]) -> Block> {
        let all: Vec<fn(&[u8; 64]) -> Block> = vec![classify, classify_swar];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, detected just above.
            return [all, vec![|b| unsafe { classify_avx2(b) }]].concat();
        }
        all
    }

    /// The prefix xor as this CPU computes it, and the portable one.
    fn prefix_xors(x: u64) -> [u64; 2] {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("pclmulqdq") {
            // SAFETY: the CPU has PCLMULQDQ, detected just above.
            return [unsafe { prefix_xor_clmul(x) }, prefix_xor(x)];
        }
        [prefix_xor(x); 2]
    }

    /// What the first pass finds (non-ASCII; where the quotes, colons and commas are), by
    /// each classifier, for the tests to compare.
    fn index_line(s: &[u8]) -> Vec<Option<(bool, [Vec<usize>; 3])>> {
        let positions = |bitmap: &[u64]| -> Vec<usize> {
            (0..64 * bitmap.len()).filter(|&i| bitmap[i / 64] >> (i % 64) & 1 == 1).collect()
        };
        classifiers()
            .into_iter()
            .map(|classify| {
                let (mut bitmaps, mut special, mut high) = ([vec![], vec![], vec![]], 0, 0);
                for b in blocks(s, classify) {
                    for (bitmap, bits) in bitmaps.iter_mut().zip([b.quote, b.colon, b.comma]) {
                        bitmap.push(bits);
                    }
                    special |= b.special;
                    high |= b.high;
                }
                let mut quotes = Vec::new();
                assert_eq!(index_quotes(s, &mut quotes, classify), (special == 0).then_some(high != 0));
                assert_eq!(quotes, bitmaps[0]);
                let mut at = Vec::new();
                while let Some(q) = next_quote(&quotes, at.last().map_or(0, |&q| q + 1)) {
                    at.push(q);
                }
                assert_eq!(at, positions(&quotes), "next_quote walks the bitmap");
                (special == 0).then(|| (high != 0, bitmaps.map(|b| positions(&b))))
            })
            .collect()
    }

    #[test]
    fn stop_index_finds_the_first_special_byte() {
        let specials = [b'"', b'\\', 0x00, 0x1F, b'\n'];
        for len in 0..40 {
            for at in 0..len {
                for &sp in &specials {
                    let mut v: Vec<u8> =
                        (0..len).map(|i| [b'a', 0x7F, 0x80, 0xFF, b' ', 0x21][i % 6]).collect();
                    v[at] = sp;
                    if at + 1 < len {
                        v[at + 1] = b'"';
                    }
                    assert_eq!(stop_index(&v), Some(at), "{v:?}");
                }
            }
            let plain: Vec<u8> = (0..len).map(|i| [b'a', 0xC3, 0xA9, 0x7F][i % 4]).collect();
            assert_eq!(stop_index(&plain), None);
        }
    }

    #[test]
    fn line_index_is_exact() {
        // `"#` is where a borrowing zero-byte test would report a second, false quote.
        const PATTERN: &[u8] = &[b'a', b'#', b'"', b'#', b':', 0x7F, b',', b'+', 0xE9, b';'];
        for len in 0..200usize {
            let mut v: Vec<u8> = (0..len).map(|i| PATTERN[i % PATTERN.len()]).collect();
            let at = |c: u8| (0..len).filter(|&i| v[i] == c).collect::<Vec<_>>();
            let expect = Some((len > 8, [at(b'"'), at(b':'), at(b',')]));
            for found in index_line(&v) {
                assert_eq!(found, expect, "{v:?}");
            }
            for bad in [b'\\', 0x00, 0x1F, b'\t'] {
                for at in 0..len {
                    let keep = v[at];
                    v[at] = bad;
                    assert!(index_line(&v).iter().all(Option::is_none), "{v:?}");
                    v[at] = keep;
                }
            }
        }
    }

    #[test]
    fn prefix_xor_is_a_running_parity() {
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        for _ in 0..1000 {
            let x = rng.u64(..);
            let want = (0..64).fold(0u64, |acc, i| {
                acc | u64::from((x & (u64::MAX >> (63 - i))).count_ones() % 2 == 1) << i
            });
            assert_eq!(prefix_xors(x), [want; 2], "{x:#x}");
        }
    }
}
