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
//!
//! The files: this one frames lines and writes them; `tail.rs` keeps the last lines for a
//! report; `json.rs` is the grammar walk that decides whether a line is one JSON object;
//! `compact.rs` is its fast path for the common flat object; `classify.rs` holds the SIMD and
//! SWAR byte classifiers both use; `bytes.rs` the short-copy helper.

mod bytes;
mod classify;
mod compact;
mod json;
#[cfg(any(test, fuzzing))]
pub mod properties;
mod tail;

use std::time::SystemTime;

use crate::time::rfc3339;
use bytes::put;
use tail::Tail;

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
    objects: Objects,
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
            objects: Objects::default(),
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
            && inject_region(trimmed, self.region, &self.object_prefix, &mut self.objects, out)
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

/// What a tagger keeps to tell JSON objects from other lines: the compact check this CPU runs
/// fastest, and the grammar walk's working memory (reused, so no line allocates).
struct Objects {
    compact: fn(&[u8]) -> Option<bool>,
    scratch: json::Scratch,
}

impl Default for Objects {
    fn default() -> Objects {
        Objects { compact: compact::compact_for_this_cpu(), scratch: json::Scratch::default() }
    }
}

impl Objects {
    /// If `s` is exactly one JSON object (no trailing bytes): whether it has a top-level
    /// `region` member. The compact check settles most log lines; the walk the rest.
    #[inline]
    fn has_region(&mut self, s: &[u8]) -> Option<bool> {
        (self.compact)(s).or_else(|| json::scan_object(s, &mut self.scratch, None))
    }
}

/// If `obj` (trimmed, starting with '{') is exactly one valid JSON object, writes it with the
/// `region` member first and returns true; otherwise writes nothing and returns false.
/// `prefix` is `{"region":"<region>"`.
fn inject_region(obj: &[u8], region: &str, prefix: &[u8], objects: &mut Objects, out: &mut Vec<u8>) -> bool {
    let Some(has_region) = objects.has_region(obj) else { return false };
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
    json::scan_object(obj, &mut objects.scratch, Some(&mut members));
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
        assert_eq!(tail.len(), tail::TAIL_LINES);
        assert_eq!(tail[0], "line 15");
        assert_eq!(tail[9], "line 24");
        assert_eq!(t.lines, 25);
    }
}
