//! What the allocator (glibc's malloc) keeps, and when it gives memory back.

/// Free memory at the top of an allocator arena past this is returned to the system when a
/// free reaches it; also the size from which an allocation gets its own mapping.
const TRIM_THRESHOLD: libc::c_int = 256 * 1024;

/// Fix glibc's trim and mmap thresholds (both [`TRIM_THRESHOLD`]) instead of letting them grow.
///
/// By default glibc raises both each time a block it had mapped on its own is freed: once the
/// inode table of a 100,000-file directory was resized (a few MiB, mapped), every arena keeps
/// up to twice that at its top, free, for good. `malloc_trim` cannot help there: it returns
/// the top of the main arena only, and the worker threads allocate from arenas of their own.
/// With fixed thresholds a free that leaves more than 256 KiB at an arena's top returns it,
/// and big tables live in mappings of their own, unmapped when they are freed.
pub fn fix_trim_threshold() {
    // SAFETY: mallopt only sets the allocator's parameters; called once, before any thread.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_MMAP_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Hand memory the allocator holds free back to the kernel (glibc's `malloc_trim`): after a big
/// table shrank, its pages would otherwise stay resident.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
