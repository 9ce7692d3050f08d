//! The pid table: the one place that calls `waitpid`, and the only way to signal a child.
//!
//! Shared by the region threads (which spawn), the signal thread (which reaps on SIGCHLD) and
//! the supervisor thread (which signals). One mutex guards the table and every `waitpid`:
//!
//! * **Spawn registers under the lock.** A region thread holds the lock from `fork` until the
//!   new pid is in the table, so a child that exits at once cannot be reaped before we know it
//!   is ours: the reaper cannot run `waitpid(-1)` in between. Its status is never mistaken
//!   for an orphan's, and never lost.
//! * **Reap removes under the lock.** `reap` drains `waitpid(-1, WNOHANG)` (SIGCHLD coalesces)
//!   and removes each managed pid in the same critical section, then hands the status to the
//!   region's owner. Everything else it reaps is a re-parented orphan: counted, dropped.
//! * **Signal only what is in the table.** A pid leaves the table only when it is reaped, and a
//!   pid cannot be recycled before it is reaped; so while we hold the lock and see the pid,
//!   it (and its process group, whose id it is) is still ours.
//!
//! std's `Child::wait` is never used: a second waiter would race the reaper.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sys::{self, ExitStatus};

/// Told, once, how a registered child ended. Runs on the signal thread with the table locked,
/// so it must only hand the status over (send on a channel), never block or call back.
pub type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

#[derive(Default)]
pub struct Registry {
    table: Mutex<HashMap<i32, OnExit>>,
    orphans_reaped: AtomicU64,
}

impl Registry {
    /// Spawns `cmd` (whose `pre_exec`/`process_group` make the child a group leader) and
    /// registers its pid before any reap can see it.
    pub fn spawn(&self, cmd: &mut Command, on_exit: OnExit) -> io::Result<Child> {
        let mut table = self.lock();
        let child = cmd.spawn()?;
        table.insert(child.id() as i32, on_exit);
        Ok(child)
    }

    /// Reaps every child that has exited. Called by the signal thread on each SIGCHLD.
    pub fn reap(&self) {
        let mut table = self.lock();
        loop {
            match sys::waitpid_any() {
                Ok(Some((pid, status))) => match table.remove(&pid) {
                    Some(on_exit) => {
                        // The leader is gone; whatever it left in its group (a forked worker,
                        // a shell pipeline) goes with it, or it would outlive its region and
                        // could hold the port the restart needs. The group id cannot have been
                        // reused: it stays taken while any member lives, and if none does this
                        // is a no-op (ESRCH).
                        let _ = sys::kill_group(pid, libc::SIGKILL);
                        on_exit(status);
                    }
                    None => {
                        self.orphans_reaped.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::output::error(None, &format!("waitpid failed: {e}"), &[]);
                    break;
                }
            }
        }
    }

    /// Sends `sig` to the process group of `pid` if that child is still unreaped.
    /// Returns false (and sends nothing) when it has already been reaped.
    pub fn signal(&self, pid: i32, sig: i32) -> bool {
        let table = self.lock();
        if !table.contains_key(&pid) {
            return false;
        }
        if let Err(e) = sys::kill_group(pid, sig) {
            crate::output::error(
                None,
                &format!("cannot send {} to process group {pid}: {e}", sys::signal_name(sig)),
                &[],
            );
        }
        true
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, OnExit>> {
        // A panic aborts the process (release profile), so a poisoned lock only appears in
        // tests; the table itself is never left half-updated.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}
