//! The apply stack: a large stack (reserved address space, its pages
//! committed only as a handler really goes that deep) with a guard page at
//! its end, that the calling thread switches to for one call (`psm`, the
//! stack switch of rust-lang's `stacker`, which rustc itself uses for deep
//! recursion). A handler that recurses deeply then neither overflows a
//! 2 MiB async worker stack nor needs a hand-off to another thread: the
//! hand-off to a dedicated apply thread and back cost two wake-ups per
//! batch on every node (a third of the CPU of a write on a 2-core machine,
//! see BENCHMARKS.md). The mapping is made once per node and reused.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

pub(crate) struct BigStack {
    /// The whole mapping: the guard page and the stack.
    map: *mut libc::c_void,
    len: usize,
    /// The stack itself (without the guard page).
    base: *mut u8,
    size: usize,
}

// SAFETY: the mapping is owned by this value alone; it is only used by the
// thread that holds the value (`run` takes `&mut self`).
unsafe impl Send for BigStack {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

impl BigStack {
    /// Reserves a stack of `size` bytes (rounded up to pages) and its guard page.
    pub(crate) fn new(size: usize) -> io::Result<BigStack> {
        let page = page_size();
        let size = size.div_ceil(page) * page;
        let len = size + page;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing; the result is checked
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // the guard page sits where the stack would grow past its end
        let stack_at = match psm::StackDirection::new() {
            psm::StackDirection::Descending => page,
            psm::StackDirection::Ascending => 0,
        };
        // SAFETY: within the mapping made above
        let base = unsafe { (map as *mut u8).add(stack_at) };
        // SAFETY: `base..base + size` lies within the mapping
        let r = unsafe {
            libc::mprotect(
                base as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        let stack = BigStack {
            map,
            len,
            base,
            size,
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Runs `f` on this stack, on the calling thread. A panic in `f` is
    /// caught on this stack and resumed on the caller's.
    pub(crate) fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let mut out = None;
        // SAFETY: the stack is page-aligned, a whole number of pages, ours
        // alone for the call (`&mut self`), and the callback cannot unwind
        // across the switch: a panic is caught inside it
        unsafe {
            psm::on_stack(self.base, self.size, || {
                out = Some(catch_unwind(AssertUnwindSafe(f)));
            })
        };
        match out {
            Some(Ok(r)) => r,
            Some(Err(panic)) => resume_unwind(panic),
            None => unreachable!("the callback on the apply stack always runs"),
        }
    }
}

impl Drop for BigStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once
        unsafe {
            libc::munmap(self.map, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burn(depth: u32) -> u64 {
        // about 1 KiB of stack per level
        let buf = std::hint::black_box([depth as u8; 1000]);
        if depth == 0 {
            return buf[0] as u64;
        }
        burn(depth - 1) + std::hint::black_box(buf[999]) as u64
    }

    #[test]
    fn deep_recursion_runs_on_the_big_stack_and_the_stack_is_reused() {
        let mut s = BigStack::new(64 << 20).unwrap();
        // ~16 MiB: more than a 2 MiB thread (this test's) could hold
        let n = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || (s.run(|| burn(16_000)), s.run(|| burn(16_000))))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(n.0, n.1);
    }

    #[test]
    fn a_panic_on_the_big_stack_reaches_the_caller() {
        let mut s = BigStack::new(1 << 20).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| s.run(|| panic!("boom"))));
        let msg = r.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom"));
        // and the stack still works
        assert_eq!(s.run(|| 7), 7);
    }
}
