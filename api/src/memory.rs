//! Handing the heap's freed pages back to the kernel, whichever allocator the binary
//! links: after a burst (10,000 pods scaled down, images imported through gRPC buffers)
//! a daemon would otherwise carry its peak as resident memory for the rest of its life.
//! The binary registers its allocator's way with [`set_release`]; without one, glibc's
//! `malloc_trim` is used.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers how the linked allocator returns free pages (once, at start).
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Returns the heap's free pages to the kernel now.
pub fn release_free_memory() {
    if let Some(release) = RELEASE.get() {
        return release();
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
