//! The fast check of the most common log line: a flat JSON object without whitespace or
//! escapes, decided on the classified bitmaps (`classify.rs`) with bit operations; anything
//! else is left to the grammar walk (`json.rs`).
//!
//! Pure functions, called on the region thread; `compact_for_this_cpu` is chosen once per
//! tagger.

use super::classify::{blocks, classify, prefix_xor, Block};
#[cfg(target_arch = "x86_64")]
use super::classify::{classify_avx2, prefix_xor_clmul};
use super::json::scalar_end;

/// `compact_object` with the classifier and prefix xor this CPU runs fastest: AVX2 and
/// carry-less multiplication where the CPU has them (most x86_64 CPUs since 2013).
pub(super) fn compact_for_this_cpu() -> fn(&[u8]) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("pclmulqdq") {
        return compact_avx2;
    }
    compact_baseline
}

fn compact_baseline(s: &[u8]) -> Option<bool> {
    compact_object(s, classify, prefix_xor)
}

/// Only handed out by `compact_for_this_cpu` once the CPU is known to have the features.
#[cfg(target_arch = "x86_64")]
fn compact_avx2(s: &[u8]) -> Option<bool> {
    /// # Safety
    /// The CPU must have AVX2 and PCLMULQDQ.
    #[target_feature(enable = "avx2,pclmulqdq")]
    unsafe fn inner(s: &[u8]) -> Option<bool> {
        // SAFETY (both closures): `inner`'s caller guarantees the features they need.
        compact_object(
            s,
            // SAFETY: as above.
            |b| unsafe { classify_avx2(b) },
            // SAFETY: as above.
            |x| unsafe { prefix_xor_clmul(x) },
        )
    }
    // SAFETY: the features were detected before this function was handed out.
    unsafe { inner(s) }
}

/// The shape of most log lines, checked 64 bytes at a time with bit operations rather
/// than byte by byte: an object without whitespace whose values are strings, numbers or
/// literals, in a line without escapes. `Some(has_region)` when `s` is such an object;
/// `None` when it is not, or not sure: the full walk then decides. It never accepts what
/// the full walk would reject (the tests run both on every generated line).
///
/// Without escapes every quote delimits a string, so the quotes alone tell which bytes
/// are inside strings. Outside them are punctuation (`{` first, `:`, `,`, `}` last),
/// strings, and runs of other bytes. The rules: `{`, `,`, `}` alternate with `:`; no two
/// punctuation marks touch; a string is followed by punctuation; a run is exactly one
/// number or literal, followed by `,` or the last `}`. So between two marks stands exactly
/// one string or run, and it is a string before each `:` (a run would be followed by `,`
/// or `}`): one key before each `:`, one value after it.
#[inline(always)]
pub(super) fn compact_object(
    s: &[u8],
    classify: impl Fn(&[u8; 64]) -> Block,
    prefix_xor: impl Fn(u64) -> u64,
) -> Option<bool> {
    let n = s.len();
    if n < 2 || s[0] != b'{' || s[n - 1] != b'}' {
        return None;
    }
    if n == 2 {
        return Some(false);
    }
    // `x` shifted up by `k` bits, the top bits of the previous word's `x` shifted in.
    let shift = |x: u64, prev: u64, k: u32| x << k | prev >> (64 - k);
    let (mut bad, mut special, mut high, mut has_region) = (0, 0, 0, false);
    // All ones while inside a string / after an odd number of punctuation marks.
    let (mut in_string, mut odd) = (0u64, 0u64);
    // The previous word's closing quotes, punctuation, scalar bytes, and `{` or `,`.
    let (mut closes_before, mut punct_before, mut scalars_before, mut key_marks_before) = (0, 0, 0, 0);
    // The line's last word: its bytes, and its last byte (the closing brace).
    let last_base = (n - 1) / 64 * 64;
    let (last_valid, closing_brace) = (!0 >> (63 - (n - 1) % 64), 1 << ((n - 1) % 64));
    let mut base = 0;
    for b in blocks(s, classify) {
        special |= b.special;
        high |= b.high;
        let (valid, last_brace) = if base == last_base { (last_valid, closing_brace) } else { (!0, 0) };
        let strings = prefix_xor(b.quote) ^ in_string; // opening quotes and contents
        in_string = ((strings as i64) >> 63) as u64;
        let closes = b.quote & !strings;
        let colons = b.colon & !strings;
        let key_marks = (b.comma & !strings) | u64::from(base == 0); // `{` or `,`
        let punct = key_marks | last_brace | colons;
        let parity = prefix_xor(punct) ^ odd;
        odd = ((parity as i64) >> 63) as u64;
        let scalars = valid & !(strings | b.quote | punct);
        bad |= (punct & !(parity ^ colons)) // `:` at even, the others at odd positions
            | (shift(punct, punct_before, 1) & punct)
            | (shift(closes, closes_before, 1) & !punct);
        // Closing quotes of keys of six bytes: is one of them `region`?
        has_region |= any_region_key(s, base, shift(key_marks, key_marks_before, 8) & closes);
        bad |= u64::from(!scalars_end_well(s, base, scalars & !shift(scalars, scalars_before, 1)));
        (closes_before, punct_before, scalars_before, key_marks_before) = (closes, punct, scalars, key_marks);
        base += 64;
    }
    if bad != 0 || in_string != 0 || special != 0 || (high != 0 && std::str::from_utf8(s).is_err()) {
        return None;
    }
    Some(has_region)
}

/// Whether one of the closing quotes in `closes` (bits of the 64 bytes from `base`) ends a
/// `"region"` key.
#[inline(always)]
fn any_region_key(s: &[u8], base: usize, mut closes: u64) -> bool {
    let mut found = false;
    while closes != 0 {
        let at = base + closes.trailing_zeros() as usize;
        found |= &s[at - 7..=at] == b"\"region\"";
        closes &= closes - 1;
    }
    found
}

/// Whether every number or literal starting at a bit of `starts` (the 64 bytes from `base`)
/// is one, followed by `,` or the line's closing brace.
#[inline(always)]
fn scalars_end_well(s: &[u8], base: usize, mut starts: u64) -> bool {
    let mut ok = true;
    while starts != 0 {
        let at = base + starts.trailing_zeros() as usize;
        ok &= scalar_end(s, at).is_some_and(|e| e == s.len() - 1 || s.get(e) == Some(&b','));
        starts &= starts - 1;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::super::json::{scan_object, Scratch};
    use super::super::trim_json_ws;
    use super::*;
    use fastrand::Rng;

    /// What the compact check says of `s`: as this CPU runs it, with the baseline classifier,
    /// and portably.
    fn three_ways(s: &[u8]) -> [Option<bool>; 3] {
        let portable = compact_object(s, super::super::classify::classify_swar, prefix_xor);
        [compact_for_this_cpu()(s), compact_baseline(s), portable]
    }

    /// The compact fast path and the full walk must agree on every line, and both with
    /// serde_json on what is an object: lines close to the compact shape, then damaged.
    #[test]
    fn the_compact_path_agrees_with_the_full_walk() {
        const VALUES: &[&[u8]] = &[
            b"\"v\"",
            b"\"\"",
            b"\"\xc3\xa9\"",
            b"0",
            b"-0",
            b"12",
            b"-3.25",
            b"1e5",
            b"1E+2",
            b"2.5e-3",
            b"true",
            b"false",
            b"null",
            b"{}",
            b"[]",
            b"[1,\"a\"]",
            b"{\"x\":1}",
        ];
        const DAMAGE: &[&[u8]] = &[
            b"01",
            b"1.",
            b"-",
            b"1e",
            b".5",
            b"tru",
            b"nul",
            b"falsey",
            b"+1",
            b" ",
            b"\t",
            b"\\",
            b"\"",
            b":",
            b",",
            b"{",
            b"}",
            b"[",
            b"]",
            b"\xff",
            b"\xc3",
            b"x",
            b"\"region\"",
        ];
        let cases: u64 = std::env::var("LOGTAG_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
        let (mut scratch, mut members) = (Scratch::default(), Vec::new());
        let (mut fast, mut objects) = (0, 0);
        for seed in 1..=cases * 5 {
            let mut rng = Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut line = b"{".to_vec();
            for m in 0..rng.u64(..8) {
                if m > 0 {
                    line.push(b',');
                }
                let key = ["\"k\"", "\"region\"", "\"regio\"", "\"regions\""][rng.u64(..4) as usize];
                line.extend_from_slice(key.as_bytes());
                line.push(b':');
                line.extend_from_slice(VALUES[rng.u64(..VALUES.len() as u64) as usize]);
            }
            line.push(b'}');
            // Long lines cross the 64-byte blocks of the quote bitmap.
            if rng.u64(..4) == 0 {
                let pad = "p".repeat(rng.u64(..130) as usize);
                line.splice(
                    1..1,
                    format!("\"{pad}\":\"{pad}\"{}", if line.len() > 2 { "," } else { "" }).into_bytes(),
                );
            }
            for _ in 0..rng.u64(..3) {
                let at = rng.u64(..line.len() as u64 + 1) as usize;
                match rng.u64(..3) {
                    0 if at < line.len() => {
                        line.remove(at);
                    }
                    _ => {
                        let d = DAMAGE[rng.u64(..DAMAGE.len() as u64) as usize];
                        line.splice(at..at, d.iter().copied());
                    }
                }
            }
            let line = trim_json_ws(&line);
            let full = scan_object(line, &mut scratch, Some(&mut members));
            members.clear();
            assert_eq!(
                scan_object(line, &mut scratch, None),
                full,
                "seed {seed}: {:?}",
                String::from_utf8_lossy(line)
            );
            // `IgnoredAny` checks the grammar without converting numbers (a `Value` would refuse
            // `1e999` as out of range); a JSON text is UTF-8 throughout.
            let is_object = line.first() == Some(&b'{')
                && std::str::from_utf8(line).is_ok()
                && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok();
            assert_eq!(full.is_some(), is_object, "seed {seed}: {:?}", String::from_utf8_lossy(line));
            objects += usize::from(is_object);
            let [compact, baseline, portable] = three_ways(line);
            assert_eq!(
                [baseline, portable],
                [compact; 2],
                "seed {seed}: {:?}",
                String::from_utf8_lossy(line)
            );
            if compact.is_some() {
                assert_eq!(compact, full, "seed {seed}: {:?}", String::from_utf8_lossy(line));
                fast += 1;
            }
        }
        // Both paths must actually be exercised.
        assert!(fast > cases as usize && objects > fast + cases as usize, "{fast} {objects}");
    }
}
