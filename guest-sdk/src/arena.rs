//! The allocator of a service's component (feature `call-arena`, on by default).
//!
//! The host makes a fresh instance for every call and drops it when the call ends, so what a
//! call frees is only worth reusing when the call allocates a lot. Allocations take the next
//! bytes of an arena at the end of linear memory, grown a page at a time up to
//! [`ARENA_BYTES`]; freeing the latest allocation gives its bytes back, freeing any other does
//! nothing (the instance's end frees it). What the arena cannot hold goes to the standard
//! allocator (dlmalloc), which reuses what is freed: a call that churns through more memory
//! than that costs at most the arena more than it did before.
//!
//! Why: dlmalloc's bookkeeping (`malloc`, `free` and their wrappers) was about 150 K of the
//! 570 K instructions the two bundled services' wasm ran per `POST /exams` saga, most of it
//! freeing what the instance's end frees anyway (callgrind, `ops/callgrind-exams.sh`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A page of linear memory.
const PAGE: usize = 64 * 1024;

/// The most bytes the arena takes from linear memory.
pub const ARENA_BYTES: usize = 1 << 20;

/// Where the arena's pages come from: linear memory in a component, a simulation in the tests.
pub(crate) trait Pages {
    /// The address one past the end of memory.
    fn end(&self) -> usize;
    /// Adds `count` pages at the end of memory; false when memory cannot grow.
    fn grow(&self, count: usize) -> bool;
}

/// The arena is `[start, end)`; allocations take bytes from `next` on.
pub(crate) struct Arena<P> {
    pages: P,
    start: Cell<usize>,
    next: Cell<usize>,
    end: Cell<usize>,
    /// It may not grow: memory refused, or another allocator grew memory past its end.
    full: Cell<bool>,
}

impl<P: Pages> Arena<P> {
    pub(crate) const fn new(pages: P) -> Self {
        Arena {
            pages,
            start: Cell::new(0),
            next: Cell::new(0),
            end: Cell::new(0),
            full: Cell::new(false),
        }
    }

    fn holds(&self, ptr: *mut u8) -> bool {
        (self.start.get()..self.end.get()).contains(&(ptr as usize))
    }

    /// `size` bytes aligned to `align` from the arena, or None when it cannot hold them.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        if self.end.get() == 0 {
            // The first allocation of the call: the arena starts where memory ends.
            let end = self.pages.end();
            self.start.set(end);
            self.next.set(end);
            self.end.set(end);
        }
        let at = self.next.get().checked_next_multiple_of(layout.align())?;
        let until = at.checked_add(layout.size())?;
        if !self.reach(until) {
            return None;
        }
        self.next.set(until);
        Some(at as *mut u8)
    }

    /// Grows the arena, when it must and may, so that it ends at or after `until`.
    fn reach(&self, until: usize) -> bool {
        if until <= self.end.get() {
            return true;
        }
        if self.full.get() || until - self.start.get() > ARENA_BYTES {
            return false;
        }
        if self.pages.end() != self.end.get() {
            // dlmalloc grew memory after the arena: it cannot grow in one piece any more.
            self.full.set(true);
            return false;
        }
        let count = (until - self.end.get()).div_ceil(PAGE);
        if !self.pages.grow(count) {
            self.full.set(true);
            return false;
        }
        self.end.set(self.end.get() + count * PAGE);
        true
    }

    /// Whether `ptr` with `size` bytes is the latest allocation (its bytes can come back).
    fn is_latest(&self, ptr: *mut u8, size: usize) -> bool {
        ptr as usize + size == self.next.get()
    }
}

unsafe impl<P: Pages> GlobalAlloc for Arena<P> {
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
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.holds(ptr) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if self.is_latest(ptr, layout.size()) {
            let until = ptr as usize + new_size;
            if self.reach(until) {
                self.next.set(until);
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

/// A component's linear memory.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
pub(crate) struct LinearMemory;

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
impl Pages for LinearMemory {
    fn end(&self) -> usize {
        core::arch::wasm32::memory_size(0) * PAGE
    }

    fn grow(&self, count: usize) -> bool {
        core::arch::wasm32::memory_grow(0, count) != usize::MAX
    }
}

// SAFETY: a component without the atomics feature runs on one thread.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for Arena<LinearMemory> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory simulated in a buffer of `capacity` bytes: it grows by pages until full; `other`
    /// grows it as another allocator would.
    struct Simulated {
        base: usize,
        used: Cell<usize>,
        capacity: usize,
    }

    impl Simulated {
        fn new(pages: usize) -> Self {
            let capacity = pages * PAGE;
            let buffer = Box::leak(vec![0u8; capacity + PAGE].into_boxed_slice());
            let base = (buffer.as_mut_ptr() as usize).next_multiple_of(PAGE);
            Simulated {
                base,
                used: Cell::new(PAGE),
                capacity,
            }
        }

        fn other_grows(&self) {
            self.used.set(self.used.get() + PAGE);
        }
    }

    impl Pages for &Simulated {
        fn end(&self) -> usize {
            self.base + self.used.get()
        }

        fn grow(&self, count: usize) -> bool {
            if self.used.get() + count * PAGE > self.capacity {
                return false;
            }
            self.used.set(self.used.get() + count * PAGE);
            true
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn allocations_follow_each_other_aligned_and_the_latest_comes_back() {
        let memory = Simulated::new(64);
        let arena = Arena::new(&memory);
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(8, 8));
            assert_eq!(
                a as usize,
                memory.base + PAGE,
                "the arena starts where memory ended"
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
        let memory = Simulated::new(64);
        let arena = Arena::new(&memory);
        unsafe {
            let a = arena.alloc(layout(4, 1));
            a.copy_from_nonoverlapping(b"abcd".as_ptr(), 4);
            let grown = arena.realloc(a, layout(4, 1), 3 * PAGE);
            assert_eq!(grown, a, "the latest grows in place, across pages");
            let b = arena.alloc(layout(4, 1));
            let moved = arena.realloc(a, layout(3 * PAGE, 1), 4 * PAGE);
            assert!(moved as usize > b as usize, "not the latest: it moves");
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
            assert_eq!(
                arena.realloc(moved, layout(4 * PAGE, 1), 2),
                moved,
                "shrinks in place"
            );
        }
    }

    #[test]
    fn beyond_the_arena_memory_comes_from_the_system_allocator() {
        let memory = Simulated::new(64);
        let arena = Arena::new(&memory);
        unsafe {
            let big = arena.alloc(layout(ARENA_BYTES + 1, 1));
            assert!(!arena.holds(big), "larger than the arena");
            big.write_bytes(7, ARENA_BYTES + 1);
            arena.dealloc(big, layout(ARENA_BYTES + 1, 1));
            let small = arena.alloc(layout(16, 8));
            assert!(arena.holds(small), "the arena still serves what fits");
        }
    }

    #[test]
    fn the_arena_stops_growing_when_memory_or_another_allocator_stops_it() {
        let memory = Simulated::new(4);
        let arena = Arena::new(&memory);
        unsafe {
            let a = arena.alloc(layout(2 * PAGE, 1));
            assert!(arena.holds(a));
            let b = arena.alloc(layout(2 * PAGE, 1));
            assert!(
                !arena.holds(b),
                "memory had no room: the system allocator's"
            );
            arena.dealloc(b, layout(2 * PAGE, 1));

            let memory = Simulated::new(64);
            let arena = Arena::new(&memory);
            let c = arena.alloc(layout(100, 1));
            memory.other_grows();
            let d = arena.alloc(layout(PAGE, 1));
            assert!(
                arena.holds(c) && !arena.holds(d),
                "memory grew past the arena"
            );
            arena.dealloc(d, layout(PAGE, 1));
            assert!(
                arena.holds(arena.alloc(layout(100, 1))),
                "what fits still comes from it"
            );
        }
    }
}
