//! One thread per region: it spawns the region's child, owns its two log pipes (stdout and
//! stderr) and tags every line, and reports the child's start and end to the supervisor.
//!
//! The thread lives until the supervisor has stopped every child, because the child's
//! parent-death signal fires when the *spawning thread* exits. The supervisor's commands and
//! the reaper's exit notice arrive on a channel. With no child pipe open the thread sleeps on
//! that channel; otherwise it sleeps in `poll` on the child's two pipes, and looks at the
//! channel after each wake-up and at least every [`MAIL_EVERY`]. No descriptor of its own: a
//! region costs the supervisor just its two pipes (what lets 12 regions run under a low
//! open-file limit). The one message that can come while a pipe is open is the child's exit
//! notice, and a child's exit closes its pipes (end of file wakes `poll`) unless a grandchild
//! still holds them; only then is the exit seen up to [`MAIL_EVERY`] late. Each pipe is framed
//! into lines on its own (`Tagger` keeps a partial line per stream), so a line begun on one
//! stream never joins a line of the other.
//!
//! Ordering invariant: `Event::Exited` is sent only after every byte the child left in both
//! pipes has been tagged and handed to stdout, so the supervisor's view (and the tail of lines
//! in a give-up report) is complete when it acts. End of file and exit are separate: a
//! grandchild may keep a pipe open after the child died, and a child may close one and live on.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Select, Sender};

use crate::accept;
use crate::config::RegionPlan;
use crate::logtag::LogFormat;
use crate::logtag::{Stream, Tagger};
use crate::output;
use crate::policy::Event;
use crate::reaper::Registry;
use crate::spawn;
use crate::sys::{self, ExitStatus};
use crate::view::LogStats;

/// Bytes read from a child's pipe at a time.
pub const READ_SIZE: usize = 64 * 1024;
/// Kernel buffer asked for each of a child's pipes: a child's burst of output costs it fewer
/// waits, and us fewer wake-ups per megabyte.
const PIPE_SIZE: usize = 1 << 20;
/// Pause before polling again after `poll` itself failed.
const POLL_RETRY: Duration = Duration::from_millis(100);
/// The longest a message waits while a child's pipe is open (see the module's documentation).
const MAIL_EVERY: Duration = Duration::from_secs(1);

pub enum Msg {
    Spawn {
        generation: u64,
    },
    /// From the reaper: the child ended (a region has at most one child at a time).
    Exited {
        status: ExitStatus,
    },
    /// Every child is gone; the thread may end.
    Quit,
}

/// How other threads reach a region thread.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<Msg>,
}

impl Mailbox {
    pub fn send(&self, msg: Msg) {
        // The receiver lives as long as the thread, which outlives every sender's use.
        let _ = self.tx.send(msg);
    }
}

pub struct Setup {
    pub index: usize,
    pub plan: RegionPlan,
    pub format: LogFormat,
    pub max_line: usize,
    pub registry: Arc<Registry>,
    pub events: Sender<Event>,
    pub stats: Arc<LogStats>,
}

pub fn start(setup: Setup) -> std::io::Result<(Mailbox, JoinHandle<()>)> {
    let (tx, rx) = unbounded();
    let mailbox = Mailbox { tx };
    let name = format!("region {}", setup.plan.name);
    let tagger = Tagger::new(setup.plan.name, setup.format, setup.max_line);
    let region = Region {
        setup,
        rx,
        mailbox: mailbox.clone(),
        tagger,
        child: None,
        out: Vec::new(),
        deferred: Vec::new(),
        delivered: 0,
        polled: Vec::new(),
        poll_failing: false,
    };
    let handle = std::thread::Builder::new().name(name).spawn(move || region.run())?;
    Ok((mailbox, handle))
}

struct Child {
    generation: u64,
    /// Read ends of the child's stdout and stderr, indexed by `Stream`; `None` once closed.
    pipes: [Option<OwnedFd>; 2],
    status: Option<ExitStatus>,
}

struct Region {
    setup: Setup,
    rx: Receiver<Msg>,
    mailbox: Mailbox,
    tagger: Tagger,
    child: Option<Child>,
    /// Tagged lines not yet handed to stdout.
    out: Vec<u8>,
    /// Messages that arrived while waiting for stdout.
    deferred: Vec<Msg>,
    /// `tagger.lines` at the last hand-over.
    delivered: u64,
    /// `poll`'s answer, reused: one flag per descriptor.
    polled: Vec<bool>,
    /// The last `poll` failed (its error was logged once).
    poll_failing: bool,
}

/// Which of the child's pipes `poll` found readable, indexed by `Stream`.
#[derive(Debug, PartialEq)]
struct Ready {
    pipes: [bool; 2],
}

impl Ready {
    /// From `poll`'s flags for the pipes of `streams`. After a failed `poll` the flags say
    /// nothing (they may be stale or missing), so everything may be ready.
    fn from_poll(ok: bool, flags: &[bool], streams: &[Stream]) -> Ready {
        if !ok {
            return Ready { pipes: [true; 2] };
        }
        let mut ready = Ready { pipes: [false; 2] };
        for (i, &stream) in streams.iter().enumerate() {
            ready.pipes[stream as usize] = flags.get(i) == Some(&true);
        }
        ready
    }
}

impl Region {
    fn run(mut self) {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            let ready = self.wait();
            if !self.handle_mail() {
                return;
            }
            for stream in Stream::BOTH {
                if ready.pipes[stream as usize] {
                    self.read_pipe(stream, &mut buf, false);
                }
            }
            if self.exited() {
                for stream in Stream::BOTH {
                    self.read_pipe(stream, &mut buf, true);
                }
                self.report_exit();
            }
        }
    }

    /// Sleeps until a message comes (no pipe open), or in `poll` until one of the child's
    /// pipes is readable or [`MAIL_EVERY`] has passed.
    ///
    /// `poll` retries EINTR itself; any other failure (ENOMEM, say) is logged once per run of
    /// failures and answered, after `POLL_RETRY`, with "everything may be ready": every
    /// descriptor here is non-blocking, so looking at each is harmless, and the region goes on
    /// at the pause's pace (it must not die: with `panic = "abort"` that would be PID 1).
    fn wait(&mut self) -> Ready {
        let mut fds = [0; 2];
        let mut streams = [Stream::Stdout; 2];
        let mut open = 0;
        for stream in Stream::BOTH {
            if let Some(fd) = self.pipe(stream) {
                (fds[open], streams[open]) = (fd, stream);
                open += 1;
            }
        }
        if open == 0 {
            // Every sender lives as long as the supervisor's event loop, which sends `Quit`
            // before it ends; a closed channel means the same.
            self.deferred.push(self.rx.recv().unwrap_or(Msg::Quit));
            return Ready { pipes: [false; 2] };
        }
        let result = sys::poll_readable(&fds[..open], MAIL_EVERY, &mut self.polled);
        match &result {
            Ok(()) if self.poll_failing => {
                self.poll_failing = false;
                output::info(Some(self.name()), "poll works again", &[]);
            }
            Err(e) if !self.poll_failing => {
                self.poll_failing = true;
                let retry = format!("{}ms", POLL_RETRY.as_millis());
                output::error(
                    Some(self.name()),
                    &format!("poll failed: {e}"),
                    &[("retry_every", retry.into())],
                );
            }
            _ => {}
        }
        if result.is_err() {
            std::thread::sleep(POLL_RETRY);
        }
        Ready::from_poll(result.is_ok(), &self.polled, &streams[..open])
    }

    /// Acts on the messages deferred while waiting for stdout, then on those waiting in the
    /// mailbox; false once told to quit.
    fn handle_mail(&mut self) -> bool {
        let mut msgs: Vec<Msg> = std::mem::take(&mut self.deferred);
        msgs.extend(self.rx.try_iter());
        for msg in msgs {
            match msg {
                Msg::Spawn { generation } => self.spawn(generation),
                Msg::Exited { status } => self.note_exit(status),
                Msg::Quit => return false,
            }
        }
        true
    }

    /// Whether the child's exit is known (its pipes may still hold output).
    fn exited(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.status.is_some())
    }

    fn name(&self) -> &'static str {
        self.setup.plan.name
    }

    /// The open read end of the child's `stream`, if there is one.
    fn pipe(&self, stream: Stream) -> Option<RawFd> {
        self.child.as_ref().and_then(|c| c.pipes[stream as usize].as_ref()).map(|p| p.as_raw_fd())
    }

    fn spawn(&mut self, generation: u64) {
        let result = (|| {
            let _fds = accept::borrow(accept::SPAWN_FDS);
            let (out_read, out_write) = log_pipe()?;
            let (err_read, err_write) = log_pipe()?;
            let mut cmd = spawn::command(&self.setup.plan, out_write, err_write, sys::getpid());
            let mailbox = self.mailbox.clone();
            let child = self
                .setup
                .registry
                .spawn(&mut cmd, Box::new(move |status| mailbox.send(Msg::Exited { status })))?;
            // `cmd` still holds our copies of the pipes' write ends: drop it, or the pipes
            // would never reach end of file.
            drop(cmd);
            Ok::<_, std::io::Error>((child.id() as i32, [Some(out_read), Some(err_read)]))
        })();
        let event = match result {
            Ok((pid, pipes)) => {
                self.child = Some(Child { generation, pipes, status: None });
                Event::Started { region: self.setup.index, generation, pid }
            }
            Err(e) => Event::SpawnFailed { region: self.setup.index, generation, error: e.to_string() },
        };
        let _ = self.setup.events.send(event);
    }

    fn note_exit(&mut self, status: ExitStatus) {
        if let Some(child) = self.child.as_mut() {
            child.status = Some(status);
        }
    }

    /// Reads what `stream`'s pipe has: once (after `poll` said so), or until it is empty
    /// (`drain`, after the child exited). End of file closes the pipe.
    fn read_pipe(&mut self, stream: Stream, buf: &mut [u8], drain: bool) {
        while let Some(fd) = self.pipe(stream) {
            match sys::read(fd, buf) {
                Ok(0) => return self.close(stream),
                Ok(n) => {
                    self.tagger.feed(stream, &buf[..n], &mut self.out);
                    self.deliver();
                    if !drain {
                        return;
                    }
                }
                // Drained: the child is gone, and what a stray grandchild may still write is
                // not this instance's output any more.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if drain {
                        self.close(stream);
                    }
                    return;
                }
                Err(e) => {
                    output::error(Some(self.name()), &format!("cannot read child output: {e}"), &[]);
                    return self.close(stream);
                }
            }
        }
    }

    /// Closes `stream`'s pipe, after emitting its last line if that has no newline.
    fn close(&mut self, stream: Stream) {
        self.tagger.finish(stream, &mut self.out);
        self.deliver();
        if let Some(c) = self.child.as_mut() {
            c.pipes[stream as usize] = None;
        }
    }

    /// Hands the tagged lines to the stdout thread. While the child runs, waits for room
    /// (blocking only this region's pipes) but keeps listening to the mailbox; once the child
    /// has exited, never waits: lines that do not fit are dropped and counted, so a blocked
    /// stdout cannot hold up a restart.
    fn deliver(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let lines = self.tagger.lines - self.delivered;
        self.delivered = self.tagger.lines;
        let Some(tokens) = output::line_tokens() else { return };
        loop {
            if self.exited() {
                match tokens.try_recv() {
                    Ok(empty) => self.hand_over(empty, lines),
                    Err(_) => {
                        self.out.clear();
                        self.setup.stats.lines_dropped.fetch_add(lines, Ordering::Relaxed);
                    }
                }
                return;
            }
            let mut sel = Select::new();
            let token = sel.recv(tokens);
            let mail = sel.recv(&self.rx);
            let op = sel.select();
            if op.index() == token {
                if let Ok(empty) = op.recv(tokens) {
                    self.hand_over(empty, lines);
                }
                return;
            }
            debug_assert_eq!(op.index(), mail);
            match op.recv(&self.rx) {
                Ok(Msg::Exited { status }) => self.note_exit(status),
                Ok(msg) => self.deferred.push(msg),
                Err(_) => return,
            }
        }
    }

    /// Queues our `lines` tagged lines for stdout; the token's empty buffer takes their place.
    fn hand_over(&mut self, empty: Vec<u8>, lines: u64) {
        output::send_lines(std::mem::replace(&mut self.out, empty), lines);
        self.setup.stats.lines.fetch_add(lines, Ordering::Relaxed);
    }

    /// Tells the supervisor the child has ended, once its status is known.
    fn report_exit(&mut self) {
        let Some(child) = self.child.take_if(|c| c.status.is_some()) else { return };
        let Some(status) = child.status else { return };
        let _ = self.setup.events.send(Event::Exited {
            region: self.setup.index,
            generation: child.generation,
            status,
            tail: self.tagger.tail(),
        });
    }
}

/// A pipe for one of a child's streams: (read end, non-blocking and grown; write end).
fn log_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = sys::pipe_cloexec()?;
    sys::set_nonblocking(&read)?;
    sys::grow_pipe(read.as_raw_fd(), PIPE_SIZE);
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_flags_map_to_streams() {
        let stderr_only = Ready::from_poll(true, &[true], &[Stream::Stderr]);
        assert_eq!(stderr_only, Ready { pipes: [false, true] });
        let both = Ready::from_poll(true, &[true, false], &Stream::BOTH);
        assert_eq!(both, Ready { pipes: [true, false] });
        assert_eq!(Ready::from_poll(true, &[], &[]), Ready { pipes: [false; 2] });
    }

    #[test]
    fn a_failed_poll_means_look_at_everything() {
        // The first `poll` of a thread failing leaves no flags at all; a later one, stale flags.
        let all = Ready { pipes: [true; 2] };
        assert_eq!(Ready::from_poll(false, &[], &Stream::BOTH), all);
        assert_eq!(Ready::from_poll(false, &[false, false], &Stream::BOTH), all);
        // Flags missing after a success cannot index out of bounds either.
        assert_eq!(Ready::from_poll(true, &[], &Stream::BOTH), Ready { pipes: [false; 2] });
    }
}
