//! Signal intake: handlers are installed by `install` on the main thread before any other
//! thread exists; the signal thread started by `start` turns each delivery into work.
//!
//! As PID 1 the kernel drops every signal we have no handler for, so all the signals we act on
//! get one here (signal-hook's self-pipe handler, which is async-signal-safe). SIGCHLD is not
//! forwarded to the supervisor: the signal thread reaps right away through the registry (the
//! one place that calls `waitpid`), which then tells the owning region thread. Deliveries of
//! the same signal coalesce; the reaper drains every exited child on each SIGCHLD.

use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use libc::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

use crate::policy::Event;
use crate::reaper::Registry;
use std::sync::Arc;

const HANDLED: [i32; 7] = [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD];

/// Installs the handlers. Call before spawning any thread or child.
pub fn install() -> std::io::Result<Signals> {
    Signals::new(HANDLED)
}

/// Runs the signal thread until `Handle::close`.
pub fn start(
    mut signals: Signals,
    registry: Arc<Registry>,
    events: Sender<Event>,
) -> (Handle, JoinHandle<()>) {
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // A child may have exited before this thread first looked.
            registry.reap();
            for signal in signals.forever() {
                let event = match signal {
                    SIGCHLD => {
                        registry.reap();
                        continue;
                    }
                    SIGTERM | SIGINT | SIGQUIT => Event::Stop { signal },
                    SIGHUP => Event::Reload,
                    _ => Event::Forward { signal },
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        })
        .expect("cannot start the signal thread");
    (handle, thread)
}
