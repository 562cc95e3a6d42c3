//! The allocator the host runs on: mimalloc, with two of its options set.
//!
//! Every request allocates and frees many small buffers (HTTP, JSON, a wasmtime store per
//! component call, SQL arguments). By callgrind's count over 200 `POST /exams`, glibc's malloc
//! and free were about 15% of the host's instructions; with mimalloc a saga costs 11% fewer
//! instructions in all.
//!
//! mimalloc's defaults on Linux keep what was once allocated: arenas are committed eagerly, and
//! freed pages go back to the kernel only after a delay and only when a later allocation passes
//! by, so the memory of compiling the components at start (about 70 MB) stayed resident for
//! good. The host commits lazily, and while it starts it gives freed pages back at once: it
//! stays as small as it was on glibc (about 45 MB idle; see the README's Benchmarks).
//!
//! Once it serves (`start_serving`), freed pages go back after 250 ms instead. Each component
//! call frees its store, and giving those pages back at once cost a `madvise`, a TLB flush on
//! the other core and a page fault to touch them again: about 5 page faults a saga at 32
//! clients. Within 250 ms they are mostly taken again (0.3 faults a saga), and the host's CPU a
//! saga fell by about 15%. A thread of its own gives back what is due while nothing else
//! allocates, as on an idle host. (With the delay from the start, reused pages resident whole
//! kept about 3 MB more after start.)

use std::time::Duration;

use libmimalloc_sys::{mi_collect, mi_option_set, mi_option_t};

/// `mi_option_arena_eager_commit` of mimalloc v3's `mi_option_e` (libmimalloc-sys names only
/// v2's options); `the_option_numbers_are_mimallocs` checks it against its default.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay`, in milliseconds.
const PURGE_DELAY: mi_option_t = 15;

/// How long a freed page stays committed before it goes back to the kernel, once the host
/// serves.
const PURGE_DELAY_MS: std::ffi::c_long = 250;

/// The host's allocator; each binary declares it as its `#[global_allocator]`.
pub type Allocator = mimalloc::MiMalloc;

/// Sets the options, unless the environment sets them (mimalloc's `MIMALLOC_…` variables). It
/// must run before the first allocation, when mimalloc reserves its first arena: each binary
/// runs it as a constructor (`.init_array`, before Rust's runtime starts), so it reads the
/// environment without allocating.
pub extern "C" fn configure() {
    for (option, variable, value) in [
        (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0),
        (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", 0),
    ] {
        // SAFETY: getenv reads a NUL-terminated name; setting an option is a plain store of a
        // value mimalloc reads when it next needs it.
        unsafe {
            if libc::getenv(variable.as_ptr()).is_null() {
                mi_option_set(option, value);
            }
        }
    }
}

/// The host has started: freed pages now stay committed for `PURGE_DELAY_MS` before they go
/// back (unless `MIMALLOC_PURGE_DELAY` set the delay), and a thread gives back those whose
/// delay is over, which mimalloc does only when an allocation passes by.
pub fn start_serving() -> std::io::Result<()> {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is a plain store of a value mimalloc reads when it next
        // needs it.
        unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) }
    }
    let every = Duration::from_millis(PURGE_DELAY_MS as u64);
    std::thread::Builder::new()
        .name("memory-release".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                // SAFETY: a collection has no precondition; without force it gives back only
                // the pages whose delay is over, from arenas mimalloc guards itself.
                unsafe { mi_collect(false) }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(option: mi_option_t) -> std::ffi::c_long {
        // SAFETY: reading an option has no precondition.
        unsafe { libmimalloc_sys::mi_option_get(option) }
    }

    /// The numbers name the options meant: their defaults are mimalloc v3's (2: eager commit
    /// where the OS overcommits; a purge delay of 1 s). A mimalloc whose options moved fails
    /// here instead of silently setting others.
    #[test]
    fn the_option_numbers_are_mimallocs() {
        assert_eq!(option(ARENA_EAGER_COMMIT), 2);
        assert_eq!(option(PURGE_DELAY), 1000);
    }
}
