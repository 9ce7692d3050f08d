//! Property test: arbitrary byte streams, fed in arbitrary chunks, against a simple batch
//! model of the rules, with an independent JSON checker that counts keys on the raw text (one
//! `region`, first). The fuzz target (`fuzz/`) runs the same check, `tagged_like_the_model`,
//! on its inputs.
//!
//! Compiled for tests and for the fuzz target only.

use super::*;
use fastrand::Rng;
use serde_json::Value;

const REGION: &str = "eu-west-1";

/// Streams built from fragments that hit the rules' edges, glued at random.
#[cfg(test)]
fn stream(rng: &mut Rng) -> Vec<u8> {
    const FRAGMENTS: &[&[u8]] = &[
        b"{}",
        b"{",
        b"}",
        b" ",
        b"\n",
        b"\r\n",
        b"\r",
        b"\"region\":\"eu-west-1\"",
        b"\"region\":\"x\"",
        b"\"region\":7",
        b"\"a\":1",
        b"\"b\":[1,{\"c\":null}]",
        b",",
        b":",
        b"\"",
        b"\\",
        b"\\u0072",
        b"\xff",
        b"\xc3\xa9",
        b"\xe2\x82",
        b"\x00",
        b"\t",
        b"plain text",
        b"[eu-west-1] ",
        b"0.5e3",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.u64(..200) {
        match rng.u64(..10) {
            0 => out.extend((0..rng.u64(..300)).map(|_| rng.u64(..256) as u8)),
            1 => {
                // A well-formed object line, sometimes with its own region.
                let own =
                    ["", "\"region\":\"eu-west-1\",", "\"region\":\"us-east-1\","][rng.u64(..3) as usize];
                out.extend_from_slice(
                    format!("{{{own}\"k{}\":\"v\\n\",\"n\":[1,2]}}\n", rng.u64(..9)).as_bytes(),
                );
            }
            _ => out.extend_from_slice(FRAGMENTS[rng.u64(..FRAGMENTS.len() as u64) as usize]),
        }
    }
    out
}

/// Tags `input` as stdout in chunks of `chunk()` bytes (at most `max` per line) and checks
/// the output line by line against the batch model; returns both.
pub fn tagged_like_the_model(
    seed: u64,
    input: &[u8],
    max: usize,
    chunk: &mut dyn FnMut() -> usize,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut t = Tagger::new(REGION, LogFormat::Inject, max);
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = chunk().clamp(1, rest.len());
        t.feed(Stream::Stdout, &rest[..n], &mut out);
        assert!(t.pending[0].len() <= max, "seed {seed}: pending grew past max_line");
        rest = &rest[n..];
    }
    t.finish(Stream::Stdout, &mut out);
    let expected = model_lines(input, max);
    let got: Vec<&[u8]> =
        out.strip_suffix(b"\n").map(|o| o.split(|&b| b == b'\n').collect()).unwrap_or_default();
    assert_eq!(got.len(), expected.len(), "seed {seed}: line count");
    for (line, want) in got.iter().zip(&expected) {
        check_line(seed, line, want);
    }
    assert_eq!(t.lines, expected.len() as u64);
    (out, expected)
}

/// A fuzz input: the first byte picks the line limit, the second the chunk sizes, the
/// rest is the child's output.
pub fn fuzz(data: &[u8]) {
    let [limit, chunks, input @ ..] = data else { return };
    let max = [4, 64, 100, 300, 1 << 16][usize::from(*limit) % 5];
    let mut rng = Rng::with_seed(u64::from(*chunks) | 1);
    tagged_like_the_model(u64::from(*chunks), input, max, &mut || 1 + rng.u64(..64) as usize);
}

/// The stored corpus (`tests/corpus/logtag/`, inputs the fuzzer found worth keeping).
#[test]
fn corpus_regression() {
    crate::corpus::replay("logtag", fuzz);
}

/// The batch model: split into lines, drop one trailing `\r`, cut long lines into pieces.
fn model_lines(input: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if parts.last().is_some_and(|l| l.is_empty()) {
        parts.pop();
    }
    for mut line in parts {
        while line.len() > max {
            let cut = char_cut(&line[..max], line[max]);
            lines.push(&line[..cut]);
            line = &line[cut..];
        }
        lines.push(line);
    }
    lines.into_iter().map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec()).collect()
}

/// Top-level keys of a JSON object text, in order, duplicates included (serde_json keeps
/// only the last of equal keys).
fn top_keys(v: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(v).map_err(|e| e.to_string())?;
    if !is_object(v) {
        return Err("not a JSON object".into());
    }
    // serde_json keeps the last of duplicate keys; count them on the raw text instead.
    let mut keys = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    let b = text.as_bytes();
    let mut expect_key = false;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = b[i] == b'{' && depth == 1;
            }
            b'}' | b']' => depth -= 1,
            b',' if depth == 1 => expect_key = true,
            b'"' => {
                let start = i;
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && expect_key {
                    let key: String = serde_json::from_str(&text[start..=i]).map_err(|e| e.to_string())?;
                    keys.push(key);
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(keys)
}

#[test]
fn arbitrary_streams_are_tagged_and_conserved() {
    let cases: u64 = std::env::var("LOGTAG_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let (mut injected, mut exported, mut pieces) = (0, 0, 0);
    for seed in 1..=cases {
        let mut rng = Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let input = stream(&mut rng);
        let max = [64, 100, 300, 1 << 16][rng.u64(..4) as usize];
        let (out, expected) = tagged_like_the_model(seed, &input, max, &mut || 1 + rng.u64(..700) as usize);
        for (line, want) in out.split(|&b| b == b'\n').zip(&expected) {
            injected += usize::from(line.starts_with(b"{"));
            exported += usize::from(line.windows(17).any(|w| w == b"\"exported_region\""));
            pieces += usize::from(want.len() == max);
        }
    }
    // The generator must actually reach the interesting cases.
    assert!(injected > cases as usize && exported > 100 && pieces > 100, "{injected} {exported} {pieces}");
}

fn check_line(seed: u64, line: &[u8], want: &[u8]) {
    if let Some(rest) = line.strip_prefix(format!("[{REGION}] ").as_bytes()) {
        assert_eq!(rest, want, "seed {seed}: plain line changed");
        assert!(
            !is_object(want) || trim_json_ws(want).len() > 100_000,
            "seed {seed}: JSON object not injected: {:?}",
            String::from_utf8_lossy(want)
        );
        return;
    }
    let keys =
        top_keys(line).unwrap_or_else(|e| panic!("seed {seed}: {e}: {:?}", String::from_utf8_lossy(line)));
    assert_eq!(keys.first().map(String::as_str), Some("region"), "seed {seed}");
    assert_eq!(keys.iter().filter(|k| *k == "region").count(), 1, "seed {seed}");
    assert!(is_object(want), "seed {seed}: not JSON: {:?}", String::from_utf8_lossy(want));
    // Conservation: the original object is the output minus our region, with an
    // `exported_region` put back as `region`. (Numbers past serde_json's range, valid
    // JSON all the same, leave only the byte-for-byte check below.)
    if let (Ok(got), Ok(original)) =
        (serde_json::from_slice::<Value>(line), serde_json::from_slice::<Value>(want))
    {
        conserved(seed, got, &original);
    }
    // Members other than region are copied byte for byte.
    if !top_keys(want).unwrap().iter().any(|k| k == "region") {
        let inside = &trim_json_ws(want)[1..trim_json_ws(want).len() - 1];
        assert!(
            line.windows(inside.len().max(1)).any(|w| w == inside) || trim_json_ws(inside).is_empty(),
            "seed {seed}"
        );
    }
}

/// UTF-8, JSON grammar (any number, however large) and an object. (serde_json skips the
/// strings it ignores without checking their UTF-8.)
fn is_object(v: &[u8]) -> bool {
    trim_json_ws(v).starts_with(b"{")
        && std::str::from_utf8(v).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(v).is_ok()
}

fn conserved(seed: u64, got: Value, original: &Value) {
    assert_eq!(got["region"], REGION);
    let mut back = got.as_object().unwrap().clone();
    back.remove("region");
    if let Some(v) = back.remove("exported_region") {
        assert_ne!(v, REGION, "seed {seed}: an equal region is not exported");
        back.insert("region".into(), v);
    } else if original.get("region").is_some() {
        back.insert("region".into(), Value::from(REGION));
    }
    assert_eq!(&Value::Object(back), original, "seed {seed}");
}
