//! The plugin's global allocator: wasi-libc's malloc with a cache of freed
//! small blocks in front of it.
//!
//! A call allocates and frees the same handful of small blocks every time
//! (the params and action the host lowers, serde's map nodes and strings,
//! the result), and malloc plus free were a quarter of the echo plugin's
//! instructions per call. Here a freed block of up to 512 bytes goes onto
//! a list for its size class and the next allocation of that class takes
//! it back, a few instructions each way. talc, tried first, only took a
//! quarter off the allocator's cost; a cache of exact classes is what
//! a steady stream of alike calls wants, so it is written here.
//!
//! Each class keeps at most `KEEP_BYTES`; past that, blocks go back to
//! malloc, so a burst of small allocations does not pin memory that a
//! later large one could reuse. Larger or over-aligned blocks go straight
//! to malloc. Only single-threaded WebAssembly builds use this (see the
//! `cfg` in lib.rs): the lists are not locked.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes are this many bytes apart.
const GRAIN: usize = 16;
/// Classes cover 1..=512 bytes (a `BTreeMap` leaf of strings to JSON values
/// is about 300 on wasm32).
const CLASSES: usize = 32;
/// Blocks are aligned as malloc aligns them without asking (8 on wasm32),
/// so a miss costs one plain malloc.
const ALIGN: usize = 8;
/// The most each class holds on its list.
const KEEP_BYTES: usize = 64 << 10;

struct Free {
    next: *mut Free,
}

#[derive(Clone, Copy)]
struct List {
    head: *mut Free,
    len: usize,
}

pub struct Cached {
    lists: UnsafeCell<[List; CLASSES]>,
}

// SAFETY: built only for WebAssembly without threads, where no two calls
// into the allocator can overlap.
#[cfg(not(test))]
unsafe impl Sync for Cached {}

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: Cached = Cached::new();

/// The class of a block this cache serves, if it serves it.
fn class(size: usize, align: usize) -> Option<usize> {
    (align <= ALIGN && size <= GRAIN * CLASSES).then(|| size.saturating_sub(1) / GRAIN)
}

/// What malloc is asked for when a class's list is empty.
fn class_layout(class: usize) -> Layout {
    // SAFETY: a multiple of 16 up to 512, with a power-of-two alignment.
    unsafe { Layout::from_size_align_unchecked((class + 1) * GRAIN, ALIGN) }
}

impl Cached {
    const fn new() -> Self {
        Cached {
            lists: UnsafeCell::new(
                [List {
                    head: ptr::null_mut(),
                    len: 0,
                }; CLASSES],
            ),
        }
    }

    /// # Safety
    /// Single-threaded, and no other reference to the lists is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn list(&self, class: usize) -> &mut List {
        // SAFETY: per the caller; `class` comes from `class()`.
        unsafe { &mut (*self.lists.get())[class] }
    }
}

unsafe impl GlobalAlloc for Cached {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout.size(), layout.align()) else {
            // SAFETY: forwarded as given.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: the lists hold only blocks of class `c` that were freed.
        unsafe {
            let list = self.list(c);
            let block = list.head;
            if block.is_null() {
                return System.alloc(class_layout(c));
            }
            list.head = (*block).next;
            list.len -= 1;
            block.cast()
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(c) = class(layout.size(), layout.align()) else {
            // SAFETY: allocated by `System` with this layout (see `alloc`).
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: `block` is a class-`c` block (`alloc` and `realloc` keep a
        // block's class equal to its layout's), at least 16 bytes and
        // 8-aligned, so it can hold the link.
        unsafe {
            let list = self.list(c);
            if list.len * (c + 1) * GRAIN >= KEEP_BYTES {
                return System.dealloc(block, class_layout(c));
            }
            let free = block.cast::<Free>();
            (*free).next = list.head;
            list.head = free;
            list.len += 1;
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class(layout.size(), layout.align()).is_none() {
            // SAFETY: forwarded as given; calloc may skip zeroing fresh memory.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: `alloc` returns null or a block of at least `layout.size()`.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                ptr::write_bytes(block, 0, layout.size());
            }
            block
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = class(layout.size(), layout.align());
        let new = class(new_size, layout.align());
        match (old, new) {
            // The block already has room: a class's blocks are its largest size.
            (Some(a), Some(b)) if a == b => block,
            // SAFETY: a `System` block stays one.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            // SAFETY: moving between the cache and malloc, or between classes:
            // a fresh block, the bytes both sizes hold, the old one freed.
            _ => unsafe {
                let moved = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                moved
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! The cache on the build machine, in front of its malloc: what a
    //! plugin's allocations see.

    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_freed_block_serves_the_next_allocation_of_its_class() {
        let cache = Cached::new();
        unsafe {
            let a = cache.alloc(layout(24, 8));
            cache.dealloc(a, layout(24, 8));
            // 17..=32 bytes are one class: the same block comes back.
            let b = cache.alloc(layout(32, 4));
            assert_eq!(a, b);
            // Another class does not take it.
            let c = cache.alloc(layout(40, 8));
            assert_ne!(c, b);
            cache.dealloc(b, layout(32, 4));
            cache.dealloc(c, layout(40, 8));
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_into_malloc() {
        let cache = Cached::new();
        unsafe {
            let mut size = 5;
            let mut block = cache.alloc(layout(size, 1));
            ptr::copy_nonoverlapping(b"ferry".as_ptr(), block, 5);
            // Within a class, in place; then to larger classes, then past
            // the cache's largest class, and back down.
            for new_size in [16, 100, 512, 513, 4000, 300, 7] {
                let moved = cache.realloc(block, layout(size, 1), new_size);
                assert!(!moved.is_null());
                if size <= 16 && new_size <= 16 {
                    assert_eq!(moved, block);
                }
                assert_eq!(std::slice::from_raw_parts(moved, 5), b"ferry");
                // Write the whole new size: the block really holds it.
                ptr::write_bytes(moved.add(5), 0xAB, new_size - 5);
                block = moved;
                size = new_size;
            }
            cache.dealloc(block, layout(size, 1));
        }
    }

    #[test]
    fn each_class_keeps_at_most_its_share() {
        let cache = Cached::new();
        let size = 64;
        let kept = KEEP_BYTES / size;
        unsafe {
            let blocks: Vec<*mut u8> = (0..kept + 10)
                .map(|_| cache.alloc(layout(size, 8)))
                .collect();
            for &b in &blocks {
                cache.dealloc(b, layout(size, 8));
            }
            assert_eq!(cache.list(class(size, 8).unwrap()).len, kept);
            // Draining the list hands the kept blocks back, then malloc's.
            let again: Vec<*mut u8> = (0..kept + 10)
                .map(|_| cache.alloc(layout(size, 8)))
                .collect();
            assert_eq!(cache.list(class(size, 8).unwrap()).len, 0);
            for b in again {
                cache.dealloc(b, layout(size, 8));
            }
        }
    }

    #[test]
    fn over_aligned_blocks_bypass_the_cache_and_keep_their_alignment() {
        let cache = Cached::new();
        unsafe {
            for align in [16, 64, 4096] {
                let b = cache.alloc(layout(32, align));
                assert_eq!(b as usize % align, 0);
                cache.dealloc(b, layout(32, align));
            }
            assert_eq!(cache.list(class(32, 8).unwrap()).len, 0);
        }
    }

    #[test]
    fn zeroed_allocations_are_zero_even_from_a_reused_block() {
        let cache = Cached::new();
        unsafe {
            let a = cache.alloc(layout(48, 8));
            ptr::write_bytes(a, 0xFF, 48);
            cache.dealloc(a, layout(48, 8));
            let b = cache.alloc_zeroed(layout(48, 8));
            assert_eq!(a, b);
            assert!(std::slice::from_raw_parts(b, 48).iter().all(|&x| x == 0));
            cache.dealloc(b, layout(48, 8));
        }
    }
}
