//! Every direct libc call of the supervisor, each wrapped once with its safety argument.
//!
//! Callable from any thread. The one exception to "any thread" is `waitpid_any`, which only
//! `reaper::Registry::reap` may call (see that module for why).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a child ended, as `waitpid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by {}", signal_name(s)),
        }
    }
}

/// `SIGTERM` rather than `15`: logs name signals.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// Reaps one exited child of this process, any child, without blocking.
/// `Ok(None)`: children exist but none has exited; `Err(ECHILD)`: no children at all.
pub fn waitpid_any() -> io::Result<Option<(i32, ExitStatus)>> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the duration of the call.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => {
            let st = if libc::WIFSIGNALED(status) {
                ExitStatus::Signal(libc::WTERMSIG(status))
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            };
            Ok(Some((pid, st)))
        }
    }
}

/// Sends `sig` to the process group led by `pgid`. ESRCH (nobody left) is not an error.
pub fn kill_group(pgid: i32, sig: i32) -> io::Result<()> {
    debug_assert!(pgid > 1, "never signal our own group or every process");
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a group.
    if unsafe { libc::kill(-pgid, sig) } == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Orphans of our descendants are re-parented to us instead of to init, so we can reap them
/// and so a bare-host supervisor sees its whole tree. (As PID 1 this is implicit.)
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument; no pointers involved.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The soft open-file limit the supervisor started with, when it raised its own: children
/// get it back (`child_pre_exec`), as Go's runtime does for the programs it starts, so a
/// plugin sees the limit the operator set. 0: not raised.
static CHILD_NOFILE: AtomicU64 = AtomicU64::new(0);

/// Raises the soft limit on open descriptors to the hard limit (as Go programs do at start):
/// the relay's connections and the children's pipes should never run into a low default soft
/// limit. Best effort: the limits stay as they were if the kernel says no.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a live rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                CHILD_NOFILE.store(lim.rlim_cur, Ordering::Relaxed);
            }
        }
    }
}

/// The soft open-file limit a child is to get back (0: leave the inherited one).
pub fn child_nofile_limit() -> u64 {
    CHILD_NOFILE.load(Ordering::Relaxed)
}

/// Marks every descriptor from 3 up close-on-exec, so whatever the supervisor inherited
/// (a CI runner's pipes, a systemd socket) never reaches a child. Descriptors the supervisor
/// opens itself are close-on-exec already (std and `pipe_cloexec` see to that).
pub fn cloexec_inherited_fds() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: walk the descriptors we actually have.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<RawFd> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: F_SETFD on a descriptor number; a closed one just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// A pipe whose both ends are close-on-exec (so a sibling's fork never holds them open).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asks for a pipe buffer of `size` bytes on `fd`, if it is a pipe; otherwise, or if the
/// kernel refuses (an unprivileged user's pipe quota), nothing changes.
pub fn grow_pipe(fd: RawFd, size: usize) {
    // SAFETY: F_SETPIPE_SZ takes an integer; on anything but a pipe it fails harmlessly.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) };
}

/// Sets TCP_NODELAY on a listening socket; Linux copies it to every accepted connection.
/// tiny_http writes a response's head and body separately, and without this Nagle's algorithm
/// holds the body until the client's delayed ACK (40 ms) for the head arrives.
pub fn nodelay_for_accepted(listener: &impl AsRawFd) -> io::Result<()> {
    set_socket_option(listener, libc::IPPROTO_TCP, libc::TCP_NODELAY, &(1 as libc::c_int))
}

/// setsockopt with a plain-data value (`c_int`, `timeval`).
fn set_socket_option<T: Copy>(socket: &impl AsRawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<T>()` bytes from a live `T`, a plain C struct or int.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A counter descriptor that becomes readable when another thread calls `wake`: lets a thread
/// that sleeps in `poll` on a pipe also hear its mailbox.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes integer arguments and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. It can only fail when the counter is about
        // to overflow, and then the descriptor is readable anyway, which is all we need.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter; true if it had been woken.
    pub fn clear(&self) -> bool {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; non-blocking, so EAGAIN when not woken.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) == 8 }
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` has passed. Returns which
/// ones, in order (none after the timeout).
pub fn poll_readable(fds: &[RawFd], timeout: Duration, ready: &mut Vec<bool>) -> io::Result<()> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    ready.clear();
    ready.extend(pfds.iter().map(|p| p.revents != 0));
    Ok(())
}

/// read(2) into `buf`; `Ok(0)` is end of file; `WouldBlock` when a non-blocking fd is empty.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads and drops what a closing or refused client still sends (non-blocking `fd`); true once
/// it has closed or failed. At most 16 reads per call, so one fast sender cannot keep a thread
/// from its other connections.
pub fn drain(fd: RawFd, buf: &mut [u8]) -> bool {
    for _ in 0..16 {
        match read(fd, buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Whether this user may execute `path` (the kernel's answer, including root's rules).
pub fn can_execute(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Runs in the forked child before exec, so it may only make async-signal-safe calls on
/// integers captured before the fork: no allocation, no locks.
///
/// Gives the child back the soft open-file limit the supervisor started with (`nofile_soft`,
/// 0: unchanged). Asks the kernel to SIGKILL the child when the thread that spawned it dies (that thread
/// lives as long as its child, so in effect: when the supervisor dies), then closes the race
/// where the supervisor died before the request was made.
pub fn child_pre_exec(supervisor_pid: i32, nofile_soft: u64) -> io::Result<()> {
    // SAFETY: prctl, getppid, getrlimit and setrlimit are async-signal-safe syscalls with
    // integer arguments or a struct on this stack.
    unsafe {
        if nofile_soft > 0 {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = nofile_soft.min(lim.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != supervisor_pid {
            libc::_exit(137);
        }
    }
    Ok(())
}

/// Resident memory (bytes) and CPU time (seconds) of a process, from /proc.
pub fn proc_usage(pid: i32) -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After ')': state is field 3 of the man page, so field N is fields[N - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let rss_pages: u64 = fields.get(24 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    Some((rss_pages * page.max(1) as u64, (utime + stime) as f64 / tick.max(1) as f64))
}

// ---- Sockets and epoll, for the relay and the HTTP front (non-blocking, close-on-exec) ----

/// An epoll instance. Tokens are the caller's; events are level-triggered.
pub struct Epoll(OwnedFd);

/// One readiness report: the caller's token and what the descriptor is ready for.
#[derive(Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// An error or hang-up is pending; the next read or write says which.
    pub broken: bool,
    /// The peer has shut down its sending side (reported where [`WANT_PEER_CLOSE`] was asked).
    pub peer_closed: bool,
}

pub const WANT_READ: u32 = libc::EPOLLIN as u32;
pub const WANT_WRITE: u32 = libc::EPOLLOUT as u32;
/// Report the peer shutting down its sending side (`Ready::peer_closed`).
pub const WANT_PEER_CLOSE: u32 = libc::EPOLLRDHUP as u32;
/// Wake one of the epolls waiting on this descriptor, not all (a listener shared by threads).
pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live epoll_event; the kernel copies it (it is ignored for DEL).
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (None: forever) and fills `out` with what is ready.
    pub fn wait(
        &self,
        raw: &mut [libc::epoll_event],
        out: &mut Vec<Ready>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        // Round up, so a deadline 0.3 ms away does not turn into a busy loop of 0 ms waits.
        let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
        out.clear();
        // SAFETY: `raw` is a live array of `raw.len()` epoll_event structs for the kernel to fill.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), raw.as_mut_ptr(), raw.len() as i32, ms) };
        if n == -1 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        let err = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        out.extend(raw[..n as usize].iter().map(|ev| {
            let events = ev.events;
            Ready {
                token: ev.u64,
                readable: events & WANT_READ != 0,
                writable: events & WANT_WRITE != 0,
                broken: events & err != 0,
                peer_closed: events & WANT_PEER_CLOSE != 0,
            }
        }));
        Ok(())
    }
}

/// accept4 with the new socket non-blocking and close-on-exec.
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers are allowed (we do not need the peer's address).
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Starts a non-blocking TCP connection to 127.0.0.1:`port`. `Ok((fd, true))` when it is
/// already connected, `Ok((fd, false))` while in progress: ask [`connect_finished`] now (on
/// loopback the handshake has usually completed by the time connect(2) returns) and again
/// once the socket is writable.
pub fn connect_loopback(port: u16) -> io::Result<(OwnedFd, bool)> {
    // SAFETY: socket takes integer arguments and returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    match connect_finished(fd.as_raw_fd(), port) {
        Some(Ok(())) => Ok((fd, true)),
        None => Ok((fd, false)),
        Some(Err(e)) => Err(e),
    }
}

/// connect(2) to 127.0.0.1:`port`, asked again of a socket whose connect is in progress: that
/// reports the outcome in one call (0 or EISCONN once connected, EALREADY while the handshake
/// runs, otherwise the connect's own error, which it clears), where poll and SO_ERROR take two.
/// `None` while in progress.
pub fn connect_finished(fd: RawFd, port: u16) -> Option<io::Result<()>> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a live sockaddr_in and the length given is its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Some(Ok(()));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EISCONN) => Some(Ok(())),
        Some(libc::EINPROGRESS | libc::EALREADY | libc::EINTR) => None,
        _ => Some(Err(e)),
    }
}

/// send(2) without SIGPIPE: a peer that went away is an `Err`, never a signal.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// recv(2) with MSG_PEEK: looks at what has arrived without taking it from the socket.
pub fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Ends our sending direction (a FIN for the peer); reading goes on.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown takes integers; on a socket already shut or reset it fails harmlessly.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Makes the coming close(2) send a reset instead of a FIN (SO_LINGER with a zero timeout):
/// how a reset from one side is passed on to the other.
pub fn reset_on_close(fd: &impl AsRawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = set_socket_option(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

pub fn set_nodelay(fd: &impl AsRawFd) {
    // Best effort: on a socket the peer already reset it fails, and nothing is lost.
    let _ = set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &(1 as libc::c_int));
}

/// Sets the listen queue of a bound, listening socket (std uses 128); best effort.
pub fn set_backlog(listener: &impl AsRawFd, backlog: i32) {
    // SAFETY: listen on a socket that already listens only updates its queue length.
    unsafe { libc::listen(listener.as_raw_fd(), backlog) };
}

/// The soft limit on open descriptors.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a live out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == -1 {
        return 1024;
    }
    lim.rlim_cur
}

/// How many descriptors this process has open now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(1)).unwrap_or(0)
}

// ---- For the HTTP front (`front/`): edge-triggered waits, socket buffers, tiny_http's socket ----

/// Edge-triggered registration (with `Epoll::add`): a report when something new arrives, not
/// while data stays unread. The front peeks at request heads without taking them, so
/// level-triggered readiness would never clear.
pub const EDGE: u32 = libc::EPOLLET as u32;

/// Asks for a receive buffer of `bytes` on a listening socket; Linux copies it to every
/// accepted connection (and doubles it for its own bookkeeping).
pub fn receive_buffer(listener: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_socket_option(listener, libc::SOL_SOCKET, libc::SO_RCVBUF, &value)
}

/// Shuts a listening socket down: a thread blocked in accept(2) on it (tiny_http's) wakes
/// with an error, and new connects are refused. The descriptor itself stays open.
pub fn shutdown_listener(listener: &impl AsRawFd) {
    // SAFETY: shutdown takes integers; on a socket already shut down it fails harmlessly.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_signals() {
        assert_eq!(ExitStatus::Signal(libc::SIGKILL).to_string(), "killed by SIGKILL");
        assert_eq!(ExitStatus::Code(3).to_string(), "exited with status 3");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn eventfd_wakes_poll() {
        let e = EventFd::new().unwrap();
        assert!(!e.clear());
        e.wake();
        let mut ready = Vec::new();
        poll_readable(&[e.raw()], Duration::from_secs(5), &mut ready).unwrap();
        assert_eq!(ready, [true]);
        assert!(e.clear());
    }

    #[test]
    fn reads_own_usage() {
        let (rss, cpu) = proc_usage(getpid()).unwrap();
        assert!(rss > 0 && cpu >= 0.0);
    }
}
