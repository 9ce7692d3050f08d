//! Turns a child's raw output bytes into tagged lines (SPEC "Logs").
//!
//! Runs on the region thread that owns the child; one `Tagger` per region, no shared state.
//! Invariants: every input byte ends up in exactly one output line (or, for invalid UTF-8 in
//! `json` format, in a replacement character); memory is bounded by `max_line` plus one read,
//! whatever the child writes; nothing here can fail or panic on any input.
//!
//! * A line that is exactly one JSON object gets a `region` member first; its own members are
//!   copied byte for byte (a different `region` of its own is renamed `exported_region`, an
//!   equal one is dropped so `region` appears once).
//! * Any other line becomes `[<region>] <line>` (format `inject`) or a JSON object with
//!   `region`, `time`, `level`, `message` (format `json`).
//! * A trailing `\r` is dropped (CRLF output); a line longer than `max_line` is emitted in
//!   pieces of at most `max_line` bytes, cut before a UTF-8 character rather than inside it.

use std::time::SystemTime;

use crate::bytes::put;
use crate::time::rfc3339;

/// How many of the last lines a region keeps for the give-up report.
pub const TAIL_LINES: usize = 10;
/// Longest tail line kept (bytes); the report is for a human, not a replay.
const TAIL_LINE_MAX: usize = 1024;

/// How lines that are not one JSON object are tagged (`SUPERVISOR_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `[<region>] <line>`
    Inject,
    /// A JSON object with `region`, `time`, `level` and `message`.
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "inject" => Some(LogFormat::Inject),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The child's two output streams, each framed into lines on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    pub const BOTH: [Stream; 2] = [Stream::Stdout, Stream::Stderr];
}

pub struct Tagger {
    region: &'static str,
    /// `[<region>] ` and `{"region":"<region>"`, the starts of tagged lines.
    plain_prefix: Vec<u8>,
    object_prefix: Vec<u8>,
    format: LogFormat,
    max_line: usize,
    /// Per stream, the start of a line whose newline has not arrived yet; never longer than
    /// `max_line`. The streams are framed apart, so a line of one never joins the other's.
    pending: [Vec<u8>; 2],
    tail: Tail,
    /// The JSON scanner's working memory, kept to avoid allocations per line.
    scratch: json::Scratch,
    /// `"time":"…"` for `json` format: one timestamp per read, not per line.
    now: String,
    /// Lines (and pieces) emitted so far.
    pub lines: u64,
}

impl Tagger {
    pub fn new(region: &'static str, format: LogFormat, max_line: usize) -> Tagger {
        Tagger {
            region,
            plain_prefix: format!("[{region}] ").into_bytes(),
            object_prefix: format!("{{\"region\":{}", serde_json::Value::from(region)).into_bytes(),
            format,
            max_line: max_line.max(4),
            pending: [Vec::new(), Vec::new()],
            tail: Tail::default(),
            scratch: json::Scratch::default(),
            now: String::new(),
            lines: 0,
        }
    }

    /// Tags every complete line of `data`, read from `stream`, into `out`; keeps an unfinished
    /// last line pending for that stream.
    pub fn feed(&mut self, stream: Stream, data: &[u8], out: &mut Vec<u8>) {
        let s = stream as usize;
        if self.format == LogFormat::Json {
            self.now = rfc3339(SystemTime::now());
        }
        self.tail.begin(data);
        let mut rest = data;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.segment(s, &rest[..i], true, out);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.segment(s, rest, false, out);
                    rest = &[];
                }
            }
        }
        self.tail.end(data);
    }

    /// `stream` ended: its last line without newline is still a line.
    pub fn finish(&mut self, stream: Stream, out: &mut Vec<u8>) {
        let s = stream as usize;
        if !self.pending[s].is_empty() {
            if self.format == LogFormat::Json {
                self.now = rfc3339(SystemTime::now());
            }
            let line = std::mem::take(&mut self.pending[s]);
            self.emit(&line, out);
            self.pending[s] = line;
            self.pending[s].clear();
        }
    }

    /// The last lines, oldest first, for a report.
    pub fn tail(&self) -> Vec<String> {
        self.tail.lines()
    }

    /// A run of bytes without newline; `terminated` if a newline followed it.
    fn segment(&mut self, s: usize, mut seg: &[u8], terminated: bool, out: &mut Vec<u8>) {
        // Complete a pending line first, emitting it in pieces while it overflows.
        while !self.pending[s].is_empty() {
            let room = self.max_line - self.pending[s].len();
            if seg.len() <= room {
                self.pending[s].extend_from_slice(seg);
                if terminated {
                    let line = std::mem::take(&mut self.pending[s]);
                    self.emit(&line, out);
                    self.pending[s] = line;
                    self.pending[s].clear();
                }
                return;
            }
            self.pending[s].extend_from_slice(&seg[..room]);
            seg = &seg[room..];
            let cut = char_cut(&self.pending[s], seg[0]);
            let piece = std::mem::take(&mut self.pending[s]);
            self.emit(&piece[..cut], out);
            self.pending[s] = piece;
            self.pending[s].drain(..cut);
        }
        while seg.len() > self.max_line {
            let cut = char_cut(&seg[..self.max_line], seg[self.max_line]);
            self.emit(&seg[..cut], out);
            seg = &seg[cut..];
        }
        if terminated {
            self.emit(seg, out);
        } else {
            self.pending[s].extend_from_slice(seg);
        }
    }

    fn emit(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.lines += 1;
        self.tail.remember(line);
        let trimmed = trim_json_ws(line);
        if trimmed.first() == Some(&b'{')
            && inject_region(trimmed, self.region, &self.object_prefix, &mut self.scratch, out)
        {
            return;
        }
        match self.format {
            LogFormat::Inject => {
                put(out, &self.plain_prefix);
                put(out, line);
                out.push(b'\n');
            }
            LogFormat::Json => {
                out.extend_from_slice(b"{\"region\":\"");
                out.extend_from_slice(self.region.as_bytes());
                out.extend_from_slice(b"\",\"time\":\"");
                out.extend_from_slice(self.now.as_bytes());
                out.extend_from_slice(b"\",\"level\":\"info\",\"message\":");
                json_string(line, out);
                out.extend_from_slice(b"}\n");
            }
        }
    }
}

/// The last `TAIL_LINES` lines. A line that lies inside the current read is remembered as a
/// position and copied only when the read is done, so a read of hundreds of lines copies ten.
#[derive(Default)]
struct Tail {
    slots: Vec<Slot>,
    next: usize,
    /// Address range of the read being fed (positions only, never dereferenced).
    data: (usize, usize),
}

#[derive(Default)]
struct Slot {
    copied: Vec<u8>,
    /// Offsets into the current read, not copied yet.
    within: Option<(usize, usize)>,
}

impl Tail {
    fn begin(&mut self, data: &[u8]) {
        let start = data.as_ptr() as usize;
        self.data = (start, start + data.len());
    }

    fn remember(&mut self, line: &[u8]) {
        let line = &line[..line.len().min(TAIL_LINE_MAX)];
        if self.slots.len() < TAIL_LINES {
            self.slots.push(Slot::default());
        }
        let at = line.as_ptr() as usize;
        let slot = &mut self.slots[self.next];
        self.next = if self.next + 1 == TAIL_LINES { 0 } else { self.next + 1 };
        if at >= self.data.0 && at + line.len() <= self.data.1 {
            slot.within = Some((at - self.data.0, at - self.data.0 + line.len()));
        } else {
            slot.within = None;
            slot.copied.clear();
            slot.copied.extend_from_slice(line);
        }
    }

    /// The read is over: copy what still points into it.
    fn end(&mut self, data: &[u8]) {
        for slot in &mut self.slots {
            if let Some((a, b)) = slot.within.take() {
                slot.copied.clear();
                slot.copied.extend_from_slice(&data[a..b]);
            }
        }
        self.data = (0, 0);
    }

    fn lines(&self) -> Vec<String> {
        let n = self.slots.len();
        (0..n)
            .map(|i| &self.slots[(self.next + i) % n].copied)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

/// `s` without leading and trailing JSON whitespace (space, tab, CR, LF; not form feed,
/// which `trim_ascii` would also take).
fn trim_json_ws(s: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = s.iter().position(|b| !ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Where to end a piece of `buf` (a full `max_line`) when `next` is the byte after it: before
/// the character that straddles the end, if one does.
fn char_cut(buf: &[u8], next: u8) -> usize {
    let is_cont = |b: u8| b & 0xC0 == 0x80;
    if !is_cont(next) {
        return buf.len();
    }
    for back in 1..=3.min(buf.len() - 1) {
        let b = buf[buf.len() - back];
        if b >= 0xC0 {
            return buf.len() - back;
        }
        if !is_cont(b) {
            break;
        }
    }
    buf.len()
}

/// Writes `s` as a JSON string: escapes quotes, backslashes and control characters; invalid
/// UTF-8 becomes U+FFFD.
pub fn json_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in valid.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1F => b"",
                _ => continue,
            };
            out.extend_from_slice(&valid[start..i]);
            if esc.is_empty() {
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
            } else {
                out.extend_from_slice(esc);
            }
            start = i + 1;
        }
        out.extend_from_slice(&valid[start..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.push(b'"');
}

/// If `obj` (trimmed, starting with '{') is exactly one valid JSON object, writes it with the
/// `region` member first and returns true; otherwise writes nothing and returns false.
/// `prefix` is `{"region":"<region>"`.
fn inject_region(
    obj: &[u8],
    region: &str,
    prefix: &[u8],
    scratch: &mut json::Scratch,
    out: &mut Vec<u8>,
) -> bool {
    let Some(has_region) = json::scan_object(obj, scratch, None) else { return false };
    put(out, prefix);
    if !has_region {
        // The common case: copy the inside of the object verbatim, with its closing brace.
        // After `{` comes a key's quote, or `}` (whitespace aside) in an empty object.
        if obj[1] != b'"' && trim_json_ws(&obj[1..obj.len() - 1]).is_empty() {
            out.push(b'}');
        } else {
            out.push(b',');
            put(out, &obj[1..]);
        }
        out.push(b'\n');
        return true;
    }
    // Rare: the child has its own `region`. Walk the members once more, keeping each byte for
    // byte, dropping an equal `region` and renaming a different one.
    let mut members = Vec::new();
    json::scan_object(obj, scratch, Some(&mut members));
    for m in &members {
        if m.is_region && json::string_equals(&obj[m.value.clone()], region) {
            continue; // the same region: keep one `region` member, ours
        }
        out.push(b',');
        if m.is_region {
            out.extend_from_slice(b"\"exported_region\"");
            out.extend_from_slice(&obj[m.key.end..m.value.end]);
        } else {
            out.extend_from_slice(&obj[m.key.start..m.value.end]);
        }
    }
    out.extend_from_slice(b"}\n");
    true
}

/// A strict JSON validator that also finds the top-level `region` member of an object.
/// Iterative (an explicit stack), so no input can overflow the thread's stack; allocation-free
/// on the common path (the scratch memory is the caller's, reused).
///
/// Lines are looked at 64 bytes at a time (SSE2 on x86_64, AVX2 where the CPU has it), as
/// bitmaps of their quotes, colons and commas. In a line without backslashes and control
/// characters (most log lines) every `"` delimits a string, and the common shape, a flat
/// object without whitespace, is checked on the bitmaps alone (`compact_object`). Other
/// lines take a grammar walk, which jumps over each string with one bit scan when the line
/// has no escapes, and scans strings byte by byte when it has.
mod json {
    use std::ops::Range;

    pub struct Member {
        pub key: Range<usize>,
        pub value: Range<usize>,
        pub is_region: bool,
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
    fn stop_index(s: &[u8]) -> Option<usize> {
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

    pub struct Scratch {
        /// `compact_object` built for this CPU.
        compact: fn(&[u8]) -> Option<bool>,
        /// What closes each open container: b'}' or b']'.
        stack: Vec<u8>,
        /// For a line without escapes: bit `k` of word `w` is set when byte `64 * w + k` is
        /// a `"`.
        quotes: Vec<u64>,
    }

    impl Default for Scratch {
        fn default() -> Scratch {
            Scratch { compact: compact_for_this_cpu(), stack: Vec::new(), quotes: Vec::new() }
        }
    }

    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

    /// High bit set in exactly the bytes of `x` equal to `b` (no carries cross bytes).
    fn bytes_equal(x: u64, b: u8) -> u64 {
        let v = x ^ (ONES * b as u64);
        !(((v & LOW7) + LOW7) | v | LOW7)
    }

    /// High bit set in exactly the bytes of `x` below 0x20.
    fn bytes_control(x: u64) -> u64 {
        // A byte is below 0x20 iff its top three bits are zero.
        bytes_equal(x & (ONES * 0xE0), 0)
    }

    /// Sixty-four bytes classified: bit `k` of `quote` is set when byte `k` is a `"`, and
    /// so on; `special` is non-zero when some byte is a backslash or a control character,
    /// `high` when some byte is not ASCII.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Block {
        quote: u64,
        colon: u64,
        comma: u64,
        special: u64,
        high: u64,
    }

    /// The classifier of this CPU: SSE2 (part of every x86_64 CPU), or plain integer
    /// arithmetic elsewhere.
    #[cfg(target_arch = "x86_64")]
    use classify_sse2 as classify;
    #[cfg(not(target_arch = "x86_64"))]
    use classify_swar as classify;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn classify_sse2(block: &[u8; 64]) -> Block {
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
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn classify_avx2(block: &[u8; 64]) -> Block {
        use std::arch::x86_64::*;
        let (lo, hi) =
            (_mm256_loadu_si256(block.as_ptr().cast()), _mm256_loadu_si256(block.as_ptr().add(32).cast()));
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
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "pclmulqdq")]
    #[inline]
    unsafe fn prefix_xor_clmul(x: u64) -> u64 {
        use std::arch::x86_64::*;
        _mm_cvtsi128_si64(_mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0)) as u64
    }

    /// `compact_object` with the classifier and prefix xor this CPU runs fastest: AVX2 and
    /// carry-less multiplication where the CPU has them (most x86_64 CPUs since 2013).
    fn compact_for_this_cpu() -> fn(&[u8]) -> Option<bool> {
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
        #[target_feature(enable = "avx2,pclmulqdq")]
        unsafe fn inner(s: &[u8]) -> Option<bool> {
            compact_object(s, |b| classify_avx2(b), |x| prefix_xor_clmul(x))
        }
        // SAFETY: the features were detected before this function was handed out.
        unsafe { inner(s) }
    }

    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn classify_swar(block: &[u8; 64]) -> Block {
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

    /// `s` classified 64 bytes at a time, in order: in the blocks, bit `k` of the `w`-th
    /// stands for byte `64 * w + k`, and there are no bits past the line's end.
    #[inline(always)]
    fn blocks<C: Fn(&[u8; 64]) -> Block>(s: &[u8], classify: C) -> Blocks<'_, C> {
        Blocks { s, at: 0, classify, pad: [b' '; 64] }
    }

    struct Blocks<'a, C> {
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
    fn index_quotes(s: &[u8], quotes: &mut Vec<u64>, classify: impl Fn(&[u8; 64]) -> Block) -> Option<bool> {
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
    fn next_quote(quotes: &[u64], from: usize) -> Option<usize> {
        let mut w = from / 64;
        let mut bits = quotes.get(w)? & (!0u64 << (from % 64));
        while bits == 0 {
            w += 1;
            bits = *quotes.get(w)?;
        }
        Some(64 * w + bits.trailing_zeros() as usize)
    }

    /// If `s` is exactly one JSON object (no trailing bytes): whether it has a top-level
    /// `region` member. With `members`, also lists every top-level member.
    #[inline]
    pub fn scan_object(s: &[u8], scratch: &mut Scratch, members: Option<&mut Vec<Member>>) -> Option<bool> {
        if members.is_none() {
            if let Some(has_region) = (scratch.compact)(s) {
                return Some(has_region);
            }
        }
        walk_object(s, scratch, members)
    }

    /// `scan_object` by the grammar walk.
    #[inline(never)]
    fn walk_object(s: &[u8], scratch: &mut Scratch, mut members: Option<&mut Vec<Member>>) -> Option<bool> {
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
    fn compact_object(
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
            let mut six = shift(key_marks, key_marks_before, 8) & closes;
            while six != 0 {
                let at = base + six.trailing_zeros() as usize;
                has_region |= &s[at - 7..=at] == b"\"region\"";
                six &= six - 1;
            }
            let mut starts = scalars & !shift(scalars, scalars_before, 1);
            while starts != 0 {
                let at = base + starts.trailing_zeros() as usize;
                let end = scalar_end(s, at);
                let ok = end.is_some_and(|e| e == n - 1 || s.get(e) == Some(&b','));
                bad |= u64::from(!ok);
                starts &= starts - 1;
            }
            (closes_before, punct_before, scalars_before, key_marks_before) =
                (closes, punct, scalars, key_marks);
            base += 64;
        }
        if bad != 0 || in_string != 0 || special != 0 || (high != 0 && std::str::from_utf8(s).is_err()) {
            return None;
        }
        Some(has_region)
    }

    /// Bit `i` of the result is set when an odd number of the bits `0..=i` of `x` are.
    #[inline(always)]
    fn prefix_xor(mut x: u64) -> u64 {
        for k in [1, 2, 4, 8, 16, 32] {
            x ^= x << k;
        }
        x
    }

    /// Where the number or literal starting at `i` ends.
    #[inline(always)]
    fn scalar_end(s: &[u8], i: usize) -> Option<usize> {
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
    fn string_end(s: &[u8], quotes: &[u64], i: usize) -> Option<usize> {
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

    /// What the compact path alone says of `s`: as this CPU runs it, with the baseline
    /// classifier, and portably.
    #[cfg(test)]
    pub fn compact_for_tests(s: &[u8]) -> [Option<bool>; 3] {
        [compact_for_this_cpu()(s), compact_baseline(s), compact_object(s, classify_swar, prefix_xor)]
    }

    /// Every classifier this machine can run.
    #[cfg(test)]
    fn classifiers() -> Vec<fn(&[u8; 64]) -> Block> {
        let all: Vec<fn(&[u8; 64]) -> Block> = vec![classify, classify_swar];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, detected just above.
            return [all, vec![|b| unsafe { classify_avx2(b) }]].concat();
        }
        all
    }

    /// The prefix xor as this CPU computes it, against the portable one.
    #[cfg(test)]
    pub fn prefix_xor_for_tests(x: u64) -> [u64; 2] {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("pclmulqdq") {
            // SAFETY: the CPU has PCLMULQDQ, detected just above.
            return [unsafe { prefix_xor_clmul(x) }, prefix_xor(x)];
        }
        [prefix_xor(x); 2]
    }

    #[cfg(test)]
    pub fn stop_index_for_tests(s: &[u8]) -> Option<usize> {
        stop_index(s)
    }

    /// What the first pass finds (non-ASCII; where the quotes, colons and commas are), by
    /// each classifier, for the tests to compare.
    #[cfg(test)]
    pub fn index_line_for_tests(s: &[u8]) -> Vec<Option<(bool, [Vec<usize>; 3])>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(format: LogFormat, max: usize, input: &[u8]) -> String {
        let mut t = Tagger::new("us-east-1", format, max);
        let mut out = Vec::new();
        t.feed(Stream::Stdout, input, &mut out);
        t.finish(Stream::Stdout, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn inject(input: &str) -> String {
        tag(LogFormat::Inject, 1 << 16, input.as_bytes())
    }

    #[test]
    fn plain_lines_get_a_prefix() {
        assert_eq!(inject("PORT=8001\nhello\n"), "[us-east-1] PORT=8001\n[us-east-1] hello\n");
        assert_eq!(inject("\n"), "[us-east-1] \n");
        assert_eq!(inject("crlf\r\n"), "[us-east-1] crlf\n");
        assert_eq!(inject("no newline"), "[us-east-1] no newline\n");
    }

    #[test]
    fn json_objects_get_region_first() {
        assert_eq!(inject("{}\n"), "{\"region\":\"us-east-1\"}\n");
        assert_eq!(inject("  { }  \n"), "{\"region\":\"us-east-1\"}\n");
        assert_eq!(
            inject("{\"level\":\"info\",\"n\":[1,{\"region\":\"x\"}]}\n"),
            "{\"region\":\"us-east-1\",\"level\":\"info\",\"n\":[1,{\"region\":\"x\"}]}\n"
        );
        assert_eq!(
            inject("{\"a\":1, \"region\":\"eu-west-1\" ,\"b\":2}"),
            "{\"region\":\"us-east-1\",\"a\":1,\"exported_region\":\"eu-west-1\",\"b\":2}\n"
        );
        assert_eq!(inject("{\"region\":\"us-east-1\",\"b\":2}\n"), "{\"region\":\"us-east-1\",\"b\":2}\n");
        assert_eq!(inject("{\"\\u0072egion\":\"us-east-1\"}\n"), "{\"region\":\"us-east-1\"}\n");
    }

    #[test]
    fn near_json_is_plain() {
        for line in ["{", "{\"a\":}", "{\"a\":1}}", "{\"a\":1} x", "{'a':1}", "{\"a\":01}", "[1]", "\x0c{}"] {
            assert_eq!(inject(line), format!("[us-east-1] {line}\n"), "{line}");
        }
        assert_eq!(inject("{\"a\":\"\t\"}"), "[us-east-1] {\"a\":\"\t\"}\n");
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
                    assert_eq!(json::stop_index_for_tests(&v), Some(at), "{v:?}");
                }
            }
            let plain: Vec<u8> = (0..len).map(|i| [b'a', 0xC3, 0xA9, 0x7F][i % 4]).collect();
            assert_eq!(json::stop_index_for_tests(&plain), None);
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
            for found in json::index_line_for_tests(&v) {
                assert_eq!(found, expect, "{v:?}");
            }
            for bad in [b'\\', 0x00, 0x1F, b'\t'] {
                for at in 0..len {
                    let keep = v[at];
                    v[at] = bad;
                    assert!(json::index_line_for_tests(&v).iter().all(Option::is_none), "{v:?}");
                    v[at] = keep;
                }
            }
        }
    }

    #[test]
    fn prefix_xor_is_a_running_parity() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1000 {
            x = x.rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let want = (0..64).fold(0u64, |acc, i| {
                acc | u64::from((x & (u64::MAX >> (63 - i))).count_ones() % 2 == 1) << i
            });
            assert_eq!(json::prefix_xor_for_tests(x), [want; 2], "{x:#x}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let out = tag(LogFormat::Inject, 1 << 20, deep.as_bytes());
        assert!(out.starts_with("{\"region\":\"us-east-1\",\"a\":[[["), "{}", &out[..40]);
    }

    #[test]
    fn json_format_wraps_plain_lines() {
        let out = tag(LogFormat::Json, 1 << 16, b"a \"q\" \\ \x01\xff\n");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["region"], "us-east-1");
        assert_eq!(v["level"], "info");
        assert_eq!(v["message"], "a \"q\" \\ \u{1}\u{FFFD}");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(out.starts_with("{\"region\":"));
    }

    #[test]
    fn long_lines_come_in_pieces() {
        let line = "x".repeat(250);
        let out = tag(LogFormat::Inject, 100, format!("{line}\nend\n").as_bytes());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].len(), "[us-east-1] ".len() + 100);
        assert_eq!(lines[2], format!("[us-east-1] {}", "x".repeat(50)));
        assert_eq!(lines[3], "[us-east-1] end");
        // A line of exactly max_line is one line, fed whole or byte by byte.
        let exact = "y".repeat(100) + "\n";
        assert_eq!(tag(LogFormat::Inject, 100, exact.as_bytes()).lines().count(), 1);
        let mut t = Tagger::new("us-east-1", LogFormat::Inject, 100);
        let mut out = Vec::new();
        for b in exact.as_bytes() {
            t.feed(Stream::Stdout, std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out.split(|&b| b == b'\n').count() - 1, 1);
    }

    #[test]
    fn pieces_do_not_split_characters() {
        let line = "é".repeat(60); // 120 bytes
        let out = tag(LogFormat::Inject, 101, line.as_bytes());
        for l in out.lines() {
            assert!(l.len() - "[us-east-1] ".len() <= 101);
        }
        let joined: String = out.lines().map(|l| &l["[us-east-1] ".len()..]).collect();
        assert_eq!(joined, line);
    }

    #[test]
    fn content_is_conserved_across_any_chunking() {
        let input: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let whole = tag(LogFormat::Inject, 64, &input);
        for step in [1, 3, 64, 65, 1000] {
            let mut t = Tagger::new("us-east-1", LogFormat::Inject, 64);
            let mut out = Vec::new();
            for chunk in input.chunks(step) {
                t.feed(Stream::Stdout, chunk, &mut out);
            }
            t.finish(Stream::Stdout, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), whole, "step {step}");
        }
    }

    #[test]
    fn streams_are_framed_apart() {
        let stdout: Vec<u8> =
            (0..300).flat_map(|i| format!("out {i} {}\n", "o".repeat(i % 90)).into_bytes()).collect();
        let stderr: Vec<u8> = (0..300)
            .flat_map(|i| format!("{{\"err\":{i},\"e\":\"{}\"}}\n", "e".repeat(i % 70)).into_bytes())
            .collect();
        let (stdout, stderr) = (&stdout[..stdout.len() - 1], &stderr[..stderr.len() - 1]); // no final newlines
        let mut t = Tagger::new("us-east-1", LogFormat::Inject, 64);
        let mut out = Vec::new();
        let (mut a, mut b, mut step) = (stdout, stderr, 1);
        while !a.is_empty() || !b.is_empty() {
            step = step * 7 % 61 + 1;
            let (n, m) = (step.min(a.len()), (step / 2 + 1).min(b.len()));
            t.feed(Stream::Stdout, &a[..n], &mut out);
            t.feed(Stream::Stderr, &b[..m], &mut out);
            (a, b) = (&a[n..], &b[m..]);
        }
        t.finish(Stream::Stdout, &mut out);
        t.finish(Stream::Stderr, &mut out);
        let out = String::from_utf8(out).unwrap();
        // Every piece of a stderr line has a byte that stdout's lines never have.
        let of_stdout = |l: &&str| {
            l.strip_prefix("[us-east-1] ").is_some_and(|b| b.bytes().all(|c| b"out 0123456789".contains(&c)))
        };
        let (from_out, from_err): (Vec<&str>, Vec<&str>) = out.lines().partition(of_stdout);
        let alone =
            |data: &[u8]| tag(LogFormat::Inject, 64, data).lines().map(String::from).collect::<Vec<_>>();
        assert_eq!(from_out, alone(stdout));
        assert_eq!(from_err, alone(stderr));
        assert_eq!(t.lines as usize, from_out.len() + from_err.len());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tagger::new("us-east-1", LogFormat::Inject, 1024);
        let mut out = Vec::new();
        let input: String = (0..25).map(|i| format!("line {i}\n")).collect();
        t.feed(Stream::Stderr, input.as_bytes(), &mut out);
        let tail = t.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "line 15");
        assert_eq!(tail[9], "line 24");
        assert_eq!(t.lines, 25);
    }
}

/// Property test: arbitrary byte streams, fed in arbitrary chunks, against a simple batch
/// model of the rules, with an independent JSON checker that counts keys on the raw text (one
/// `region`, first). The
/// fuzz target (`fuzz/`) runs the same check, `tagged_like_the_model`, on its inputs.
#[cfg(any(test, fuzzing))]
pub mod properties {
    use super::*;
    use serde_json::Value;

    const REGION: &str = "eu-west-1";

    /// xorshift64*: deterministic, so a failure names the seed that reproduces it.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Streams built from fragments that hit the rules' edges, glued at random.
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
        for _ in 0..rng.below(200) {
            match rng.below(10) {
                0 => out.extend((0..rng.below(300)).map(|_| rng.below(256) as u8)),
                1 => {
                    // A well-formed object line, sometimes with its own region.
                    let own =
                        ["", "\"region\":\"eu-west-1\",", "\"region\":\"us-east-1\","][rng.below(3) as usize];
                    out.extend_from_slice(
                        format!("{{{own}\"k{}\":\"v\\n\",\"n\":[1,2]}}\n", rng.below(9)).as_bytes(),
                    );
                }
                _ => out.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len() as u64) as usize]),
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
        let mut rng = Rng(u64::from(*chunks) | 1);
        tagged_like_the_model(u64::from(*chunks), input, max, &mut || 1 + rng.below(64) as usize);
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
                        let key: String =
                            serde_json::from_str(&text[start..=i]).map_err(|e| e.to_string())?;
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
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let input = stream(&mut rng);
            let max = [64, 100, 300, 1 << 16][rng.below(4) as usize];
            let (out, expected) =
                tagged_like_the_model(seed, &input, max, &mut || 1 + rng.below(700) as usize);
            for (line, want) in out.split(|&b| b == b'\n').zip(&expected) {
                injected += usize::from(line.starts_with(b"{"));
                exported += usize::from(line.windows(17).any(|w| w == b"\"exported_region\""));
                pieces += usize::from(want.len() == max);
            }
        }
        // The generator must actually reach the interesting cases.
        assert!(
            injected > cases as usize && exported > 100 && pieces > 100,
            "{injected} {exported} {pieces}"
        );
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
        let (mut scratch, mut members) = (json::Scratch::default(), Vec::new());
        let (mut fast, mut objects) = (0, 0);
        for seed in 1..=cases * 5 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut line = b"{".to_vec();
            for m in 0..rng.below(8) {
                if m > 0 {
                    line.push(b',');
                }
                let key = ["\"k\"", "\"region\"", "\"regio\"", "\"regions\""][rng.below(4) as usize];
                line.extend_from_slice(key.as_bytes());
                line.push(b':');
                line.extend_from_slice(VALUES[rng.below(VALUES.len() as u64) as usize]);
            }
            line.push(b'}');
            // Long lines cross the 64-byte blocks of the quote bitmap.
            if rng.below(4) == 0 {
                let pad = "p".repeat(rng.below(130) as usize);
                line.splice(
                    1..1,
                    format!("\"{pad}\":\"{pad}\"{}", if line.len() > 2 { "," } else { "" }).into_bytes(),
                );
            }
            for _ in 0..rng.below(3) {
                let at = rng.below(line.len() as u64 + 1) as usize;
                match rng.below(3) {
                    0 if at < line.len() => {
                        line.remove(at);
                    }
                    _ => {
                        let d = DAMAGE[rng.below(DAMAGE.len() as u64) as usize];
                        line.splice(at..at, d.iter().copied());
                    }
                }
            }
            let line = trim_json_ws(&line);
            let full = json::scan_object(line, &mut scratch, Some(&mut members));
            members.clear();
            assert_eq!(
                json::scan_object(line, &mut scratch, None),
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
            let [compact, baseline, portable] = json::compact_for_tests(line);
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
        let keys = top_keys(line)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {:?}", String::from_utf8_lossy(line)));
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
}
