//! Prometheus text exposition (format 0.0.4): parse a child's page, relabel every sample with
//! its region, and merge the regions' families into one valid page.
//!
//! Pure functions, run on the HTTP thread that answers `/metrics`. A child's page is accepted
//! whole or not at all: any line that is not valid text format rejects that region's page
//! (its `supervisor_region_scrape_success` becomes 0), so one broken child can never break the
//! merged page. Label values and help texts are validated and copied as written (their escapes
//! kept), never decoded and re-encoded.

use std::collections::HashMap;
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }
}

/// One metric family of one page: its help, type, and sample lines already relabelled, each
/// ending in a newline (one buffer, not a string per sample: this runs per scrape).
#[derive(Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    pub kind: Kind,
    pub samples: String,
}

/// Parses `page` and relabels each sample with `region="<region>"` (an existing `region`
/// label is kept as `exported_region`). Families come out in order of first appearance.
pub fn parse_and_relabel(page: &str, region: &str) -> Result<Vec<Family>, String> {
    let mut parsed = Page { families: Vec::new(), index: HashMap::new() };
    let mut labels = Vec::new();
    for (n, line) in page.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}", n + 1);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            parsed.comment(comment).map_err(fail)?;
        } else {
            parsed.sample(line, region, &mut labels).map_err(|why| fail(&why))?;
        }
    }
    // A HELP or TYPE without samples is legal, but pointless in the merged page.
    let mut families = parsed.families;
    families.retain(|f| !f.samples.is_empty());
    Ok(families)
}

/// The families of the page being parsed, in order of first appearance, and their index by name.
struct Page {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Page {
    /// The index of family `name`, added (untyped, without help or samples) if it is new.
    fn family_of(&mut self, name: &str) -> usize {
        let families = &mut self.families;
        *self.index.entry(name.to_string()).or_insert_with(|| {
            families.push(Family {
                name: name.to_string(),
                help: None,
                kind: Kind::Untyped,
                samples: String::new(),
            });
            families.len() - 1
        })
    }

    /// Reads a comment line (`comment` follows its `#`): a HELP or a TYPE, or any other comment.
    fn comment(&mut self, comment: &str) -> Result<(), &'static str> {
        let mut words = comment.trim_start().splitn(3, [' ', '\t']);
        let (keyword, name, rest) = (words.next(), words.next(), words.next());
        match (keyword, name) {
            (Some("HELP"), Some(name)) => self.help(name, rest.unwrap_or("")),
            (Some("TYPE"), Some(name)) => self.kind(name, rest),
            _ => Ok(()), // any other comment
        }
    }

    /// Reads `# HELP <name> <help>`: once per family.
    fn help(&mut self, name: &str, help: &str) -> Result<(), &'static str> {
        if !metric_name(name) {
            return Err("bad metric name in HELP");
        }
        if !help_text(help) {
            return Err("bad escape in HELP");
        }
        let f = self.family_of(name);
        if self.families[f].help.is_some() {
            return Err("second HELP for a family");
        }
        self.families[f].help = Some(help.to_string());
        Ok(())
    }

    /// Reads `# TYPE <name> <kind>`: once per family, before its samples.
    fn kind(&mut self, name: &str, kind: Option<&str>) -> Result<(), &'static str> {
        if !metric_name(name) {
            return Err("bad metric name in TYPE");
        }
        let kind = kind.map(str::trim).and_then(Kind::parse).ok_or("unknown TYPE")?;
        let f = self.family_of(name);
        if self.families[f].kind != Kind::Untyped || !self.families[f].samples.is_empty() {
            return Err("TYPE after samples or twice");
        }
        self.families[f].kind = kind;
        Ok(())
    }

    /// Reads a sample line and appends it, relabelled, to its family's samples.
    fn sample<'a>(
        &mut self,
        line: &'a str,
        region: &str,
        labels: &mut Vec<(&'a str, &'a str)>,
    ) -> Result<(), String> {
        let name = &line[..line.bytes().position(|c| !name_byte(c)).unwrap_or(line.len())];
        if !metric_name(name) {
            return Err("bad metric name".into());
        }
        let base = family_name(name, &self.index, &self.families);
        let f = self.family_of(base);
        let body = &mut self.families[f].samples;
        let mark = body.len();
        relabel_sample(line, name.len(), region, labels, body).inspect_err(|_| body.truncate(mark))
    }
}

/// Which family a sample belongs to: `x_bucket`, `x_sum`, `x_count` (and `x_created`) belong to
/// histogram or summary `x` when it is declared; anything else to its own name.
fn family_name<'a>(name: &'a str, index: &HashMap<String, usize>, families: &[Family]) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count", "_created"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(&f) = index.get(base) {
                let kind = families[f].kind;
                let fits = match suffix {
                    "_bucket" => kind == Kind::Histogram,
                    _ => matches!(kind, Kind::Histogram | Kind::Summary),
                };
                if fits {
                    return base;
                }
            }
        }
    }
    name
}

fn name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Validates one sample line (whose metric name is `line[..name_len]`) and appends it to
/// `text` with the region label first, ending in a newline. `labels` is scratch space.
fn relabel_sample<'a>(
    line: &'a str,
    name_len: usize,
    region: &str,
    labels: &mut Vec<(&'a str, &'a str)>,
    text: &mut String,
) -> Result<(), String> {
    let b = line.as_bytes();
    text.push_str(&line[..name_len]);
    text.push_str("{region=\"");
    text.push_str(region);
    text.push('"');
    let mut i = name_len;
    let brace = skip_ws(b, name_len);
    if b.get(brace) == Some(&b'{') {
        i = read_labels(line, brace + 1, labels)?;
        write_labels(labels, text);
    }
    text.push('}');
    write_value(&line[i..], text)
}

/// Reads the labels of a sample, from just after its `{` at `i` through the closing `}`,
/// into `labels`; returns where the line goes on after the `}`.
fn read_labels<'a>(
    line: &'a str,
    mut i: usize,
    labels: &mut Vec<(&'a str, &'a str)>,
) -> Result<usize, String> {
    let b = line.as_bytes();
    labels.clear();
    loop {
        i = skip_ws(b, i);
        if b.get(i) == Some(&b'}') {
            return Ok(i + 1);
        }
        let (label, value, end) = read_label(line, i)?;
        i = skip_ws(b, end);
        if labels.iter().any(|(l, _)| *l == label) {
            return Err(format!("label {label} given twice"));
        }
        labels.push((label, value));
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            _ => return Err("expected ',' or '}' after a label".into()),
        }
    }
}

/// Reads one `name="value"` pair starting at `i`: its name, its value as written (escapes
/// kept), and where the line goes on after the closing quote.
fn read_label(line: &str, mut i: usize) -> Result<(&str, &str, usize), String> {
    let b = line.as_bytes();
    let start = i;
    while b.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
        i += 1;
    }
    let label = &line[start..i];
    if !label_name(label) {
        return Err("bad label name".into());
    }
    i = skip_ws(b, i);
    if b.get(i) != Some(&b'=') {
        return Err("label without '='".into());
    }
    i = skip_ws(b, i + 1);
    if b.get(i) != Some(&b'"') {
        return Err("label value not quoted".into());
    }
    let value_start = i + 1;
    let value_end = closing_quote(b, value_start)?;
    Ok((label, &line[value_start..value_end], value_end + 1))
}

/// Where the label value that starts at `i` ends: its closing quote. A label value may
/// escape only `\\`, `\"` and `\n`.
fn closing_quote(b: &[u8], mut i: usize) -> Result<usize, String> {
    loop {
        match b.get(i) {
            None => return Err("unterminated label value".into()),
            Some(b'"') => return Ok(i),
            Some(b'\\') => match b.get(i + 1) {
                Some(b'\\' | b'"' | b'n') => i += 2,
                _ => return Err("bad escape in label value".into()),
            },
            Some(_) => i += 1,
        }
    }
}

/// Appends a sample's own labels to `text`, after the region label.
fn write_labels(labels: &[(&str, &str)], text: &mut String) {
    for (label, value) in labels {
        text.push(',');
        if *label == "region" {
            // Prometheus' own rule for a clashing target label: prefix `exported_` until
            // the name is free.
            let mut renamed = String::from("exported_region");
            while labels.iter().any(|(l, _)| *l == renamed) {
                renamed.insert_str(0, "exported_");
            }
            text.push_str(&renamed);
        } else {
            text.push_str(label);
        }
        text.push_str("=\"");
        text.push_str(value);
        text.push('"');
    }
}

/// Validates the rest of a sample line after its name and labels (the value, then an optional
/// integer timestamp) and appends it to `text`, ending in a newline.
fn write_value(rest: &str, text: &mut String) -> Result<(), String> {
    if !rest.starts_with([' ', '\t']) {
        return Err("no space before the value".into());
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("no value")?;
    if !float(value) {
        return Err(format!("bad value {value:?}"));
    }
    text.push(' ');
    text.push_str(value);
    if let Some(ts) = fields.next() {
        if ts.parse::<i64>().is_err() {
            return Err(format!("bad timestamp {ts:?}"));
        }
        text.push(' ');
        text.push_str(ts);
    }
    if fields.next().is_some() {
        return Err("trailing text after the timestamp".into());
    }
    text.push('\n');
    Ok(())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

fn metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A HELP text may escape only `\\` and `\n`.
fn help_text(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            return false;
        }
    }
    true
}

/// Go's ParseFloat forms Prometheus writes: decimals, exponents, `NaN`, `+Inf`, `-Inf`.
fn float(s: &str) -> bool {
    matches!(s, "NaN" | "+Inf" | "-Inf" | "Inf")
        || (s.bytes().all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c)) && s.parse::<f64>().is_ok())
}

/// Merges the regions' families into `out`: one `# HELP`/`# TYPE` per family, its samples together,
/// regions in order. A region's family whose type differs from the one already merged is left
/// out (a page cannot give one name two types), and so is a family named like one of
/// `reserved` (the supervisor's own).
pub fn merge(pages: Vec<Vec<Family>>, reserved: &[&str], out: &mut String) {
    // Each merged family keeps the regions' sample buffers as they are (moved, not copied)
    // and writes them out once, in order.
    struct Merged {
        first: Family,
        more: Vec<String>,
    }
    let mut merged: Vec<Merged> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for page in pages {
        for family in page {
            if reserved.contains(&family.name.as_str()) {
                continue;
            }
            match index.get(&family.name) {
                Some(&f) if merged[f].first.kind == family.kind => {
                    let m = &mut merged[f];
                    if m.first.help.is_none() {
                        m.first.help = family.help;
                    }
                    m.more.push(family.samples);
                }
                Some(_) => {} // conflicting type: left out
                None => {
                    index.insert(family.name.clone(), merged.len());
                    merged.push(Merged { first: family, more: Vec::new() });
                }
            }
        }
    }
    let size: usize =
        merged.iter().map(|m| m.first.samples.len() + m.more.iter().map(String::len).sum::<usize>()).sum();
    out.reserve(size + merged.len() * 128);
    for Merged { first: f, more } in merged {
        if let Some(help) = &f.help {
            let _ = writeln!(out, "# HELP {} {help}", f.name);
        }
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
        out.push_str(&f.samples);
        for samples in more {
            out.push_str(&samples);
        }
    }
}

/// The fuzz check (`fuzz/`, and `corpus_regression` below): any page either is refused or
/// relabels into families whose merge, of two regions, is itself a valid page holding every
/// sample of both, each family once.
#[cfg(any(test, fuzzing))]
pub fn fuzz(data: &[u8]) {
    let Ok(page) = std::str::from_utf8(data) else { return };
    let Ok(a) = parse_and_relabel(page, "us-east-1") else { return };
    let b = parse_and_relabel(page, "eu-west-1").expect("a page accepted for one region is for another");
    let samples = |fs: &[Family]| fs.iter().map(|f| f.samples.lines().count()).sum::<usize>();
    let want = samples(&a) + samples(&b);
    let mut out = String::new();
    merge(vec![a, b], &[], &mut out);
    let again = parse_and_relabel(&out, "x").unwrap_or_else(|e| panic!("merged page refused: {e}\n{out}"));
    assert_eq!(samples(&again), want, "{out}");
    let mut names: Vec<&str> = again.iter().map(|f| f.name.as_str()).collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "a family twice: {out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored fuzz corpus (`tests/corpus/exposition/`) through the fuzz check.
    #[test]
    fn corpus_regression() {
        crate::corpus::replay("exposition", fuzz);
    }

    fn merged(pages: Vec<Vec<Family>>, reserved: &[&str]) -> String {
        let mut out = String::new();
        merge(pages, reserved, &mut out);
        out
    }

    const PAGE: &str = "# HELP http_requests_total Requests.\n\
        # TYPE http_requests_total counter\n\
        http_requests_total{code=\"200\",path=\"/a\"} 12\n\
        http_requests_total{code=\"500\" , path=\"/b\",} 3 1700000000000\n\
        \n\
        # a comment\n\
        # TYPE lat histogram\n\
        lat_bucket{le=\"0.5\"} 1\n\
        lat_bucket{le=\"+Inf\"} 2\n\
        lat_sum 0.7\n\
        lat_count 2\n\
        # TYPE q summary\n\
        q{quantile=\"0.9\"} NaN\n\
        q_sum 1e3\n\
        q_count 4\n\
        plain_untyped -Inf\n\
        items{region=\"eu-central-1\",note=\"a \\\"quoted\\\" \\\\ }\\n\"} 5\n";

    #[test]
    fn relabels_and_groups() {
        let f = parse_and_relabel(PAGE, "us-east-1").unwrap();
        let names: Vec<_> = f.iter().map(|f| (f.name.as_str(), f.kind)).collect();
        assert_eq!(
            names,
            [
                ("http_requests_total", Kind::Counter),
                ("lat", Kind::Histogram),
                ("q", Kind::Summary),
                ("plain_untyped", Kind::Untyped),
                ("items", Kind::Untyped)
            ]
        );
        assert_eq!(
            f[0].samples.lines().nth(1).unwrap(),
            "http_requests_total{region=\"us-east-1\",code=\"500\",path=\"/b\"} 3 1700000000000"
        );
        assert_eq!(f[1].samples.lines().count(), 4);
        assert_eq!(f[1].samples.lines().nth(3).unwrap(), "lat_count{region=\"us-east-1\"} 2");
        assert_eq!(
            f[4].samples.lines().next().unwrap(),
            "items{region=\"us-east-1\",exported_region=\"eu-central-1\",note=\"a \\\"quoted\\\" \\\\ }\\n\"} 5"
        );
    }

    #[test]
    fn merges_one_header_per_family() {
        let a = parse_and_relabel(PAGE, "us-east-1").unwrap();
        let b = parse_and_relabel(PAGE, "eu-west-1").unwrap();
        let page = merged(vec![a, b], &[]);
        assert_eq!(page.matches("# TYPE http_requests_total counter").count(), 1);
        assert_eq!(page.matches("# HELP http_requests_total").count(), 1);
        let lines: Vec<&str> = page.lines().collect();
        let at = |needle: &str| lines.iter().position(|l| l.starts_with(needle)).unwrap();
        // A family's samples stay together, regions in order.
        assert!(at("http_requests_total{region=\"eu-west-1\"") < at("# TYPE lat "));
        assert!(at("lat_count{region=\"us-east-1\"") < at("lat_bucket{region=\"eu-west-1\""));
    }

    #[test]
    fn conflicting_types_and_reserved_names_are_left_out() {
        let a = parse_and_relabel("# TYPE x counter\nx 1\nsupervisor_region_up 3\n", "us-east-1").unwrap();
        let b = parse_and_relabel("# TYPE x gauge\nx 2\n", "eu-west-1").unwrap();
        let page = merged(vec![a, b], &["supervisor_region_up"]);
        assert_eq!(page, "# TYPE x counter\nx{region=\"us-east-1\"} 1\n");
    }

    #[test]
    fn invalid_pages_are_rejected_whole() {
        for bad in [
            "x{a=\"1\"} one",
            "x{a=1} 1",
            "x{a=\"1} 1",
            "x{a=\"\\q\"} 1",
            "x{a=\"1\",a=\"2\"} 1",
            "1x 1",
            "x 1 2 3",
            "x 1 12.5",
            "x{9a=\"1\"} 1",
            "# TYPE x wrong",
            "x 1\n# TYPE x counter",
            "x{a=\"1\"}1",
            "<html>404 page not found</html>",
        ] {
            assert!(parse_and_relabel(bad, "us-east-1").is_err(), "{bad:?}");
        }
        let e = parse_and_relabel("ok 1\nbroken{", "us-east-1").unwrap_err();
        assert!(e.starts_with("line 2: "), "{e}");
    }

    #[test]
    fn exported_region_clash_gets_another_prefix() {
        let f = parse_and_relabel("x{region=\"a\",exported_region=\"b\"} 1\n", "us-east-1").unwrap();
        assert_eq!(
            f[0].samples.lines().next().unwrap(),
            "x{region=\"us-east-1\",exported_exported_region=\"a\",exported_region=\"b\"} 1"
        );
    }

    /// Arbitrary input never panics; valid pages round-trip with the region label added.
    #[test]
    fn property_never_panics_and_round_trips() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces = [
            "x", "_y:z", "{", "}", "=", "\"", "\\", ",", " ", "\n", "1", "NaN", "# TYPE ", "counter", "a",
            "region",
        ];
        for _ in 0..20_000 {
            let n = next() % 30;
            let page: String = (0..n).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect();
            let _ = parse_and_relabel(&page, "us-east-1");
        }
        for _ in 0..2_000 {
            let page: String = (0..(next() % 20))
                .map(|i| format!("m{}{{l=\"v{}\",region=\"r\"}} {}\n", next() % 5, i, next() % 1000))
                .collect();
            let families = parse_and_relabel(&page, "us-east-1").unwrap();
            let merged = merged(vec![families], &[]);
            let samples: Vec<&str> = merged.lines().filter(|l| !l.starts_with('#')).collect();
            assert_eq!(samples.len(), page.lines().count());
            for s in samples {
                assert!(
                    s.contains("{region=\"us-east-1\",l=\"v") && s.contains(",exported_region=\"r\"}"),
                    "{s}"
                );
            }
        }
    }
}
