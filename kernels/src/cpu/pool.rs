//! Parallel sections for the forward pass: a small pool whose workers spin between the many
//! short parallel steps of a token instead of sleeping between them.
//!
//! A decode step runs a few parallel sections per layer (q/k/v, attention, o, gate/up, down),
//! each tens of microseconds long. Rayon's idle workers go to sleep within microseconds, and
//! waking one is a futex round trip that on a virtual machine costs about as much as a section.
//! This pool's workers keep polling for a while after each section (spinning, then yielding the
//! core to anything else runnable), so the next section starts at once, and park when work stops.
//!
//! Which thread runs an item changes nothing in any result: a section is a set of independent
//! items (blocks of weight rows, (token, head) pairs), each computed whole by one thread.
//! [`for_each`] falls back to rayon when the pool is taken (another thread's section, a nested
//! call) or when the rayon pool in use has another size than this one, so the thread count a
//! caller configured through rayon is the one that runs.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long an idle worker polls by pure spinning before it starts yielding its core.
const SPIN: Duration = Duration::from_micros(100);

/// How long an idle worker polls (spinning, then yielding) before it parks.
const POLL: Duration = Duration::from_millis(2);

/// Runs `f` on every item, in parallel on the current rayon pool's number of threads (the
/// calling thread included), and returns when all are done. A panic in `f` is re-raised here
/// once every item has finished.
pub fn for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let threads = rayon::current_num_threads();
    if items.len() <= 1 || threads <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    let pool = POOL.get_or_init(|| Pool::start(threads - 1));
    if pool.workers + 1 == threads {
        // A poisoned lock only records that an item panicked in an earlier section.
        let turn = match pool.turn.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(_turn) = turn {
            let slots: Vec<Mutex<Option<T>>> =
                items.into_iter().map(|t| Mutex::new(Some(t))).collect();
            let body = |i: usize| {
                let item = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(t) = item {
                    f(t);
                }
            };
            pool.run(slots.len(), &body);
            return;
        }
    }
    items.into_par_iter().for_each(&f);
}

/// The process's pool, sized by the first rayon pool of two or more threads that asked.
static POOL: OnceLock<Pool> = OnceLock::new();

/// One section: its items are claimed one by one through `next`.
struct Section<'a> {
    body: &'a (dyn Fn(usize) + Sync),
    count: usize,
    next: AtomicUsize,
    /// The first panic of an item, re-raised by the submitting thread.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Section<'_> {
    /// Claims and runs items until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.count {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.body)(i))) {
                self.panic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(p);
            }
        }
    }
}

struct Pool {
    workers: usize,
    /// Held by the thread whose section the pool runs.
    turn: Mutex<()>,
    state: &'static State,
}

/// What the submitting thread and the workers share.
struct State {
    /// The current section; valid while `busy` is not zero.
    section: AtomicPtr<Section<'static>>,
    /// Bumped once per section, after `section` and `busy` are set.
    epoch: AtomicU64,
    /// Workers that have not yet finished with the current section.
    busy: AtomicUsize,
    /// Workers parked (or about to park) on `wake`.
    parked: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

impl Pool {
    fn start(workers: usize) -> Pool {
        let state: &'static State = Box::leak(Box::new(State {
            section: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let mut started = 0;
        for i in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("cllm-pool-{i}"))
                .spawn(move || worker(state, 0));
            if spawned.is_ok() {
                started += 1;
            }
        }
        Pool {
            workers: started,
            turn: Mutex::new(()),
            state,
        }
    }

    /// Runs `body(0..count)` on the workers and the calling thread (which holds `turn`).
    fn run(&self, count: usize, body: &(dyn Fn(usize) + Sync)) {
        let section = Section {
            body,
            count,
            next: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        let s = self.state;
        s.busy.store(self.workers, Ordering::Relaxed);
        // SAFETY of the lifetime erasure: the section outlives every worker's use of it, since
        // this function returns only once `busy` is back to zero, and workers touch the section
        // only between seeing the new epoch and decrementing `busy`.
        s.section.store(
            &section as *const Section<'_> as *mut Section<'static>,
            Ordering::Relaxed,
        );
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        section.work();
        while s.busy.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        let panic = section
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }
}

/// A worker's loop; `seen` is the epoch at its start (0: the pool has run nothing yet).
fn worker(s: &'static State, mut seen: u64) {
    loop {
        let since = Instant::now();
        let mut polls = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let idle = since.elapsed();
            if idle < SPIN {
                std::hint::spin_loop();
            } else if idle < POLL {
                std::thread::yield_now();
            } else {
                let mut g = s.park.lock().unwrap_or_else(|e| e.into_inner());
                s.parked.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.parked.fetch_sub(1, Ordering::SeqCst);
            }
        };
        seen = epoch;
        // SAFETY: the section stays valid until this worker decrements `busy` (see `Pool::run`).
        let section = unsafe { &*s.section.load(Ordering::Relaxed) };
        section.work();
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_on_any_thread_count() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for n in [0, 1, 2, 7, 100] {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    for_each((0..n).collect(), |i: usize| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(
                        hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                        "{threads} {n}"
                    );
                }
            });
        }
    }

    #[test]
    fn sections_from_many_threads_at_once_all_complete() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            (0..8).into_par_iter().for_each(|k| {
                for _ in 0..50 {
                    let total = AtomicUsize::new(0);
                    for_each((0..16).collect(), |i: usize| {
                        total.fetch_add(i + k, Ordering::Relaxed);
                    });
                    assert_eq!(total.into_inner(), 120 + 16 * k);
                }
            });
        });
    }

    #[test]
    fn a_panicking_item_is_reraised_and_the_pool_runs_on() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                for_each((0..32).collect(), |i: usize| {
                    if i == 5 {
                        panic!("item 5");
                    }
                })
            })
        }));
        let message = r.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"item 5"));
        // The pool still runs sections afterwards.
        let total = AtomicUsize::new(0);
        pool.install(|| {
            for_each((0..10).collect(), |i: usize| {
                total.fetch_add(i, Ordering::Relaxed);
            })
        });
        assert_eq!(total.into_inner(), 45);
    }
}
