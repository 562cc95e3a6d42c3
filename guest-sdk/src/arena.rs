//! The allocator of a service's component (feature `call-arena`, on by default).
//!
//! The host makes a fresh instance for every call and drops it when the call ends, so what a
//! call frees is rarely worth reusing. Allocations take the next bytes of an arena of
//! [`ARENA_BYTES`] in the component's static memory; freeing the latest allocation gives its
//! bytes back, freeing any other does nothing (the instance's end frees it). What the arena
//! cannot hold goes to the standard allocator (dlmalloc), which reuses what is freed: a call
//! that churns through more than the arena costs no more memory than it did without it.
//!
//! Why static memory: the arena lies in the zeroed memory every instance starts with, so it
//! never grows linear memory. An earlier arena grew memory at the end of linear memory on
//! every call, and each growth cost the host two `mprotect`s (the pooling allocator makes the
//! grown pages accessible, then takes them away for the slot's next instance) — a TLB
//! shootdown each, which cost more under load than the bookkeeping it saved.
//!
//! Why an arena: dlmalloc's bookkeeping (`malloc`, `free` and their wrappers) was about 140 K
//! of the 390 K instructions the two bundled services' wasm ran per `POST /exams` saga, most
//! of it freeing what the instance's end frees anyway (callgrind, `ops/callgrind-exams.sh`).

// Natively (and with the feature off) only the tests use it; the condition is `installed`'s.
#![cfg_attr(
    not(all(
        feature = "call-arena",
        target_arch = "wasm32",
        not(target_feature = "atomics")
    )),
    allow(dead_code)
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};

/// The bytes of the arena, in every component built with the SDK.
pub const ARENA_BYTES: usize = 256 * 1024;

/// An arena of `N` bytes; allocations take bytes from `next` on.
#[repr(C, align(16))]
pub(crate) struct Arena<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    /// The offset of the first free byte.
    next: Cell<usize>,
}

impl<const N: usize> Arena<N> {
    /// An empty arena: all zeros, so that a static one lies in `.bss` and costs the component
    /// no bytes of its image.
    pub(crate) const fn new() -> Self {
        Arena {
            bytes: UnsafeCell::new([0; N]),
            next: Cell::new(0),
        }
    }

    fn start(&self) -> usize {
        self.bytes.get() as usize
    }

    fn holds(&self, ptr: *mut u8) -> bool {
        (self.start()..self.start() + N).contains(&(ptr as usize))
    }

    /// The address `size` bytes from `at` end at, when the arena holds them.
    fn fits(&self, at: usize, size: usize) -> Option<usize> {
        let until = at.checked_add(size)?;
        (until <= self.start() + N).then_some(until)
    }

    /// Bytes for `layout` from the arena, or None when it cannot hold them.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let at = (self.start() + self.next.get()).checked_next_multiple_of(layout.align())?;
        let until = self.fits(at, layout.size())?;
        self.next.set(until - self.start());
        Some(at as *mut u8)
    }

    /// Whether `ptr` with `size` bytes is the latest allocation (its bytes can come back).
    fn is_latest(&self, ptr: *mut u8, size: usize) -> bool {
        ptr as usize + size == self.start() + self.next.get()
    }
}

unsafe impl<const N: usize> GlobalAlloc for Arena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.take(layout) {
            Some(ptr) => ptr,
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.holds(ptr) {
            unsafe { System.dealloc(ptr, layout) }
        } else if self.is_latest(ptr, layout.size()) {
            self.next.set(ptr as usize - self.start());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.holds(ptr) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if self.is_latest(ptr, layout.size()) {
            if let Some(until) = self.fits(ptr as usize, new_size) {
                self.next.set(until - self.start());
                return ptr;
            }
        } else if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: the caller promises that new_size, rounded up to the alignment, fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}

/// Every allocation of the component goes through the call's arena: a fresh instance per call
/// frees everything when the call ends. A service with an allocator of its own turns the
/// feature `call-arena` off.
#[cfg(all(
    feature = "call-arena",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
mod installed {
    use super::{ARENA_BYTES, Arena};

    // SAFETY: a component without the atomics feature runs on one thread.
    unsafe impl<const N: usize> Sync for Arena<N> {}

    #[global_allocator]
    static CALL_ARENA: Arena<ARENA_BYTES> = Arena::new();
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: usize = 4096;

    fn arena() -> Box<Arena<BYTES>> {
        Box::new(Arena::new())
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn allocations_follow_each_other_aligned_and_the_latest_comes_back() {
        let arena = arena();
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(8, 8));
            assert_eq!(
                a as usize,
                arena.start(),
                "the first takes the arena's start"
            );
            assert_eq!(b as usize, a as usize + 8, "aligned to 8");
            arena.dealloc(b, layout(8, 8));
            assert_eq!(arena.alloc(layout(8, 8)), b, "the latest's bytes came back");
            arena.dealloc(a, layout(3, 1));
            assert_ne!(arena.alloc(layout(1, 1)), a, "an earlier one's do not");
        }
    }

    #[test]
    fn the_latest_grows_in_place_and_others_move_with_their_bytes() {
        let arena = arena();
        unsafe {
            let a = arena.alloc(layout(4, 1));
            a.copy_from_nonoverlapping(b"abcd".as_ptr(), 4);
            let grown = arena.realloc(a, layout(4, 1), 1000);
            assert_eq!(grown, a, "the latest grows in place");
            let b = arena.alloc(layout(4, 1));
            let moved = arena.realloc(a, layout(1000, 1), 2000);
            assert!(moved as usize > b as usize, "not the latest: it moves");
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
            assert_eq!(
                arena.realloc(moved, layout(2000, 1), 2),
                moved,
                "shrinks in place"
            );
        }
    }

    #[test]
    fn what_the_arena_cannot_hold_comes_from_the_system_allocator() {
        let arena = arena();
        unsafe {
            let big = arena.alloc(layout(BYTES + 1, 1));
            assert!(!arena.holds(big), "larger than the arena");
            big.write_bytes(7, BYTES + 1);
            arena.dealloc(big, layout(BYTES + 1, 1));
            let most = arena.alloc(layout(BYTES - 64, 16));
            assert!(arena.holds(most), "what fits comes from the arena");
            let beyond = arena.alloc(layout(128, 16));
            assert!(!arena.holds(beyond), "what no longer fits does not");
            beyond.write_bytes(1, 128);
            let small = arena.alloc(layout(16, 16));
            assert!(arena.holds(small), "what still fits does");
            arena.dealloc(beyond, layout(128, 16));
        }
    }

    #[test]
    fn the_latest_moves_out_when_it_outgrows_the_arena() {
        let arena = arena();
        unsafe {
            let a = arena.alloc(layout(100, 1));
            a.write_bytes(9, 100);
            let grown = arena.realloc(a, layout(100, 1), 2 * BYTES);
            assert!(!arena.holds(grown), "too large for the arena");
            assert!(
                std::slice::from_raw_parts(grown, 100)
                    .iter()
                    .all(|&b| b == 9)
            );
            assert_eq!(
                arena.alloc(layout(100, 1)),
                a,
                "the bytes it left came back"
            );
            arena.dealloc(grown, layout(2 * BYTES, 1));
        }
    }
}
