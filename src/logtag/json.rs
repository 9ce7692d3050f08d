//! A strict JSON validator that also finds the top-level `region` member of an object.
//! Iterative (an explicit stack), so no input can overflow the thread's stack; allocation-free
//! on the common path (the scratch memory is the caller's, reused).
//!
//! Lines are looked at 64 bytes at a time (SSE2 on x86_64, AVX2 where the CPU has it), as
//! bitmaps of their quotes, colons and commas. In a line without backslashes and control
//! characters (most log lines) every `"` delimits a string, and the common shape, a flat
//! object without whitespace, is checked on the bitmaps alone (`compact.rs`, first). Other
//! lines take a grammar walk, which jumps over each string with one bit scan when the line
//! has no escapes, and scans strings byte by byte when it has.
//!
//! Runs on the region thread, inside its `Tagger`; the working memory (`Scratch`) is the
//! tagger's, reused from line to line.

use std::ops::Range;

use super::classify::{classify, index_quotes, next_quote, stop_index};

pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
    pub is_region: bool,
}

#[derive(Default)]
pub struct Scratch {
    /// What closes each open container: b'}' or b']'.
    stack: Vec<u8>,
    /// For a line without escapes: bit `k` of word `w` is set when byte `64 * w + k` is
    /// a `"`.
    quotes: Vec<u64>,
}

/// If `s` is exactly one JSON object (no trailing bytes): whether it has a top-level
/// `region` member. With `members`, also lists every top-level member.
#[inline(never)]
pub fn scan_object(s: &[u8], scratch: &mut Scratch, mut members: Option<&mut Vec<Member>>) -> Option<bool> {
    let plain = index_quotes(s, &mut scratch.quotes, classify);
    if plain == Some(true) {
        // Non-ASCII is legal only inside strings; one check of the whole line covers them.
        std::str::from_utf8(s).ok()?;
    }
    let quotes = if plain.is_some() { Some(&scratch.quotes[..]) } else { None };
    let stack = &mut scratch.stack;
    let mut p = Scanner { s, i: 0, quotes };
    let mut has_region = false;
    p.expect(b'{')?;
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key_start = p.i;
            let escaped = p.string()?;
            let key = key_start..p.i;
            let is_region = if escaped {
                string_equals(&s[key.clone()], "region")
            } else {
                &s[key.clone()] == b"\"region\""
            };
            has_region |= is_region;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value_start = p.i;
            p.value(stack)?;
            if let Some(m) = members.as_deref_mut() {
                m.push(Member { key, value: value_start..p.i, is_region });
            }
            p.ws();
            match p.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    (p.i == s.len()).then_some(has_region)
}

/// Where the number or literal starting at `i` ends.
#[inline(always)]
pub(super) fn scalar_end(s: &[u8], i: usize) -> Option<usize> {
    match s[i] {
        b'-' | b'0'..=b'9' => number_end(s, i),
        b't' => literal_end(s, i, b"true"),
        b'f' => literal_end(s, i, b"false"),
        b'n' => literal_end(s, i, b"null"),
        _ => None,
    }
}

/// Where the string starting at `i` ends (after its closing quote), in a line without
/// escapes whose quote bitmap is `quotes`.
#[inline(always)]
pub(super) fn string_end(s: &[u8], quotes: &[u64], i: usize) -> Option<usize> {
    if s.get(i)? == &b'"' {
        Some(next_quote(quotes, i + 1)? + 1)
    } else {
        None
    }
}

/// Where `word` ends if it stands at `i`.
#[inline(always)]
fn literal_end(s: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    let end = i + word.len();
    (s.get(i..end)? == word).then_some(end)
}

/// Where the JSON number starting at `i` ends, if one does.
#[inline(always)]
fn number_end(s: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while matches!(s.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        i
    };
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    match s.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    if s.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        (end > i + 1).then_some(())?;
        i = end;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        (end > i).then_some(())?;
        i = end;
    }
    Some(i)
}

/// Whether the JSON text `raw` is a string equal to `want`.
pub fn string_equals(raw: &[u8], want: &str) -> bool {
    if raw.len() == want.len() + 2 && &raw[1..raw.len() - 1] == want.as_bytes() {
        return raw[0] == b'"';
    }
    // Escapes (`"\u0072egion"`) are rare: let a real decoder settle it.
    raw.first() == Some(&b'"')
        && raw.contains(&b'\\')
        && serde_json::from_slice::<String>(raw).is_ok_and(|d| d == want)
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    /// The quote bitmap from the first pass, when the line has no escapes.
    quotes: Option<&'a [u64]>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string; returns whether it had escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        match self.quotes {
            // No escapes in this line: this quote and the next delimit the string.
            Some(quotes) => {
                self.i = string_end(self.s, quotes, self.i)?;
                Some(false)
            }
            None => self.escaped_string(),
        }
    }

    /// A string of a line with escapes or control characters, byte by byte.
    #[inline(never)]
    fn escaped_string(&mut self) -> Option<bool> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Fast run over ordinary bytes.
            self.i += stop_index(&self.s[self.i..])?;
            match self.next()? {
                // Outside strings any non-ASCII byte is a syntax error, so UTF-8 needs
                // checking only here, and only for strings that are not pure ASCII.
                b'"' => {
                    let body = &self.s[start..self.i - 1];
                    return (body.is_ascii() || std::str::from_utf8(body).is_ok()).then_some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            for _ in 0..4 {
                                if !self.next()?.is_ascii_hexdigit() {
                                    return None;
                                }
                            }
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a raw control character
            }
        }
    }

    /// One value of any kind; containers are walked with an explicit stack.
    fn value(&mut self, stack: &mut Vec<u8>) -> Option<()> {
        stack.clear(); // b'}' or b']': what closes each open container
        loop {
            self.ws();
            // A value is expected here.
            match self.peek()? {
                b'{' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        stack.push(b'}');
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        stack.push(b']');
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                _ => self.i = scalar_end(self.s, self.i)?,
            }
            // A value ended: close containers, or move to the next element.
            loop {
                let Some(&close) = stack.last() else { return Some(()) };
                self.ws();
                match self.next()? {
                    b',' if close == b'}' => {
                        self.key()?;
                        break;
                    }
                    b',' => break,
                    b if b == close => {
                        stack.pop();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// `"key" :` inside an object.
    fn key(&mut self) -> Option<()> {
        self.ws();
        self.string()?;
        self.ws();
        self.expect(b':')
    }
}
