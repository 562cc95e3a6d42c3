//! The smallest service: `GET /noop` answers `null`. `saga-bench instantiate` calls it to
//! measure what one instantiate-and-call costs the host itself.
//!
//! It is written against the raw bindings, `no_std`, with an allocator of its own: a component
//! built with Rust's standard library (as every SDK service is) imports the WASI functions the
//! library links in — stdio, terminals, environment, exit — and instantiating it means
//! resolving each of them, which about doubles the cost of a no-op call (64 K instructions
//! against 31 K, callgrind). This one imports no function, so the figure is the host's.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "participant",
});

use exports::saga::host::service::Guest;
use saga::host::types::{
    Error, Handler, HttpMethod, Manifest, Request, Response, RestRoute, Trigger,
};

struct Noop;

impl Guest for Noop {
    fn describe() -> Manifest {
        Manifest {
            name: String::from("noop"),
            handlers: vec![Handler {
                name: String::from("GET /noop"),
                triggers: vec![Trigger::RestQuery(RestRoute {
                    method: HttpMethod::Get,
                    path: String::from("/noop"),
                })],
            }],
            aggregates: Vec::new(),
            sagas: Vec::new(),
        }
    }

    fn handle(_request: Request) -> Result<Response, Error> {
        Ok(Response {
            status: 200,
            payload: String::from("null"),
        })
    }
}

export!(Noop);

/// The bytes every allocation of a call comes from. The host makes a fresh instance for each
/// call, so nothing is ever freed: `describe` and a `handle` take a few hundred bytes.
const HEAP_BYTES: usize = 64 * 1024;

/// Allocations take the next bytes of `bytes`; a call that needed more would fail its
/// allocation (and trap), which a no-op never does.
struct Bump {
    bytes: UnsafeCell<[u8; HEAP_BYTES]>,
    used: UnsafeCell<usize>,
}

// SAFETY: a component instance runs one thread.
unsafe impl Sync for Bump {}

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one thread; `used` stays within `bytes`.
        unsafe {
            let base = self.bytes.get() as usize;
            let start = (base + *self.used.get()).next_multiple_of(layout.align());
            if start + layout.size() > base + HEAP_BYTES {
                return core::ptr::null_mut();
            }
            *self.used.get() = start + layout.size() - base;
            start as *mut u8
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: Bump = Bump {
    bytes: UnsafeCell::new([0; HEAP_BYTES]),
    used: UnsafeCell::new(0),
};

/// How the host's lowering of arguments allocates in the component. wasi-libc exports it for a
/// component built with the standard library; this one has no libc.
///
/// # Safety
///
/// The canonical ABI's contract: `old` is null or an allocation of `old_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    // SAFETY: the canonical ABI passes a valid alignment; `old` holds `old_len` bytes.
    unsafe {
        let new = HEAP.alloc(Layout::from_size_align_unchecked(new_len, align));
        if new.is_null() {
            core::arch::wasm32::unreachable();
        }
        if !old.is_null() {
            core::ptr::copy_nonoverlapping(old, new, old_len.min(new_len));
        }
        new
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
