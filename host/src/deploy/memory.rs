//! Memory a compilation used, handed back when it is done. The host
//! allocates with mimalloc, whose per-thread heaps keep freed pages for a
//! short delay before returning them, and return them only when the same
//! thread allocates again. Compilations run on threads that then go idle
//! or exit (each has a rayon pool of its own, see `runtime::cache`), so
//! without help a cold start's compilation (hundreds of MiB for an
//! interpreter component) would stay in the host's RSS for good.
//!
//! While any compilation runs, freed pages are returned at once (purge
//! delay 0); when the last one ends, the delay is put back and a blocking
//! thread, where the loads ran, collects what its heap still holds.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in its v2
/// and v3 headers; the `libmimalloc-sys` constants skip it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static SAVED_DELAY: AtomicI64 = AtomicI64::new(10);

/// Held for the length of one compilation.
pub struct Compiling(());

impl Compiling {
    pub fn begin() -> Compiling {
        if RUNNING.fetch_add(1, Ordering::AcqRel) == 0 {
            // SAFETY: reading and setting an option is thread-safe in
            // mimalloc.
            unsafe {
                SAVED_DELAY.store(
                    libmimalloc_sys::mi_option_get(PURGE_DELAY) as i64,
                    Ordering::Relaxed,
                );
                libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
            }
        }
        Compiling(())
    }
}

impl Drop for Compiling {
    fn drop(&mut self) {
        if RUNNING.fetch_sub(1, Ordering::AcqRel) == 1 {
            let delay = SAVED_DELAY.load(Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, delay as _) };
        }
    }
}

/// Asks a blocking thread of tokio's to return the free memory its heap
/// holds.
pub async fn give_back() {
    // SAFETY: mi_collect only walks the calling thread's own heap.
    let _ = tokio::task::spawn_blocking(|| unsafe { libmimalloc_sys::mi_collect(true) }).await;
}
