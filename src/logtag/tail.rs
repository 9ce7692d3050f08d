//! The last lines of a region's output, kept for the give-up report (SPEC "Restart policy":
//! the region, the cause and its last lines).
//!
//! Owned by the region's `Tagger`, on the region thread.

/// How many of the last lines a region keeps for the give-up report.
pub const TAIL_LINES: usize = 10;
/// Longest tail line kept (bytes); the report is for a human, not a replay.
const TAIL_LINE_MAX: usize = 1024;

/// The last `TAIL_LINES` lines. A line that lies inside the current read is remembered as a
/// position and copied only when the read is done, so a read of hundreds of lines copies ten.
#[derive(Default)]
pub struct Tail {
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
    pub fn begin(&mut self, data: &[u8]) {
        let start = data.as_ptr() as usize;
        self.data = (start, start + data.len());
    }

    pub fn remember(&mut self, line: &[u8]) {
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
    pub fn end(&mut self, data: &[u8]) {
        for slot in &mut self.slots {
            if let Some((a, b)) = slot.within.take() {
                slot.copied.clear();
                slot.copied.extend_from_slice(&data[a..b]);
            }
        }
        self.data = (0, 0);
    }

    pub fn lines(&self) -> Vec<String> {
        let n = self.slots.len();
        (0..n)
            .map(|i| &self.slots[(self.next + i) % n].copied)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_inside_a_read_are_copied_when_it_ends() {
        let mut tail = Tail::default();
        let long = vec![b'x'; TAIL_LINE_MAX + 10];
        tail.remember(b"before any read"); // not inside a read: copied at once
        let read: Vec<u8> = (0..12).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        tail.begin(&read);
        for line in read.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            tail.remember(line);
        }
        tail.end(&read);
        tail.remember(&long);
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 3");
        assert_eq!(lines[8], "line 11");
        assert_eq!(lines[9].len(), TAIL_LINE_MAX, "a long line is kept shortened");
    }
}
