//! The machine's two cores, shared out between the heavy proofs.
//!
//! A bootstrap, a squashfs or a rebuild keeps both cores busy: it takes
//! both (`all`). A VM under TCG keeps about one and a third busy, and
//! much of a proof's time is the guest waiting on a timer, the network or
//! the firmware: two VM proofs run side by side (`one`), each in about
//! 1.5 times its time alone, so two boots end sooner than one after the
//! other. A proof that takes both waits until both are free; a core that
//! is free meanwhile goes to the next proof that needs one (no core idles
//! while a proof waits for it: the proofs that take both run when the
//! single-core ones leave both free, at the latest when they are done).
//! `scripts/test` runs more test threads than cores, so that waiting
//! proofs never leave a free core without a proof to take it, and light
//! proofs (no core) run beside them.
//!
//! Every hold is written to `target/tmp/core-holds.txt` (what, how long it
//! waited, how long it held): `scripts/test` prints the longest, so a run
//! says where its time went.

use std::sync::{Condvar, Mutex};
use std::time::Instant;

const CORES: usize = 2;

struct State {
    used: usize,
}

/// Cores to share out.
pub struct Pool {
    cores: usize,
    state: Mutex<State>,
    freed: Condvar,
}

static POOL: Pool = Pool::new(CORES);

/// Cores held until dropped.
pub struct Held<'a> {
    pool: &'a Pool,
    n: usize,
    since: Instant,
    waited: f64,
}

/// Both cores: builds, rebuilds, upgrades, and proofs that boot two VMs.
pub fn all() -> Held<'static> {
    POOL.take(CORES)
}

/// One core: a proof that boots one VM at a time.
pub fn one() -> Held<'static> {
    POOL.take(1)
}

impl Pool {
    const fn new(cores: usize) -> Pool {
        Pool {
            cores,
            state: Mutex::new(State { used: 0 }),
            freed: Condvar::new(),
        }
    }

    fn take(&self, n: usize) -> Held<'_> {
        let t0 = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.used + n > self.cores {
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.used += n;
        Held {
            pool: self,
            n,
            since: Instant::now(),
            waited: t0.elapsed().as_secs_f64(),
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        {
            let mut s = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
            s.used -= self.n;
        }
        self.pool.freed.notify_all();
        if !std::ptr::eq(self.pool, &POOL) {
            return;
        }
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let line = format!(
            "{:7.1}s held, {:6.1}s waited, {} core(s): {name}{}\n",
            self.since.elapsed().as_secs_f64(),
            self.waited,
            self.n,
            if std::thread::panicking() {
                " (failed)"
            } else {
                ""
            }
        );
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("core-holds.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = std::io::Write::write_all(&mut f, line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Never more than two cores out; while a proof waits for both, the
    /// free core goes to single-core proofs (none idles), and the proof
    /// that waits runs once they leave both free.
    #[test]
    fn holds_never_exceed_the_cores_and_no_core_idles_while_all_waits() {
        static OUT: AtomicUsize = AtomicUsize::new(0);
        static MAX: AtomicUsize = AtomicUsize::new(0);
        let work = |n: usize| {
            let now = OUT.fetch_add(n, Ordering::SeqCst) + n;
            MAX.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            OUT.fetch_sub(n, Ordering::SeqCst);
        };
        static P: Pool = Pool::new(CORES);
        let first = P.take(1);
        let order = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let _h = P.take(CORES);
                order.lock().unwrap().push("all");
                work(2);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            // One core is free while `all` waits: a single-core proof
            // takes it at once.
            s.spawn(|| {
                let _h = P.take(1);
                order.lock().unwrap().push("one");
                work(1);
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert_eq!(*order.lock().unwrap(), ["one"], "a core idled");
            drop(first);
        });
        assert!(MAX.load(Ordering::SeqCst) <= CORES);
        assert_eq!(*order.lock().unwrap(), ["one", "all"]);
    }
}
