//! Allocator tuning for the forwarding workload.
//!
//! Every forwarded frame passes through short-lived buffers of up to 64 KiB. glibc's defaults
//! return freed memory at the top of the heap to the kernel once 128 KiB are free, and its
//! dynamic mmap threshold moves, so a steady stream of such buffers grew and trimmed the heap
//! over and over: page faults were a tenth of the server's profile, and raising the thresholds
//! gave about 40% more throughput and 30% less CPU per GB (`docs/benchmarks.md`). Idle memory
//! does not change; up to 8 MiB freed under load stays with the process for the next burst.

/// Keep this much free memory at the top of a heap before giving it back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 8 << 20;
/// Serve allocations below this from the heap, not from their own mappings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Applies the tuning; call before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: mallopt only changes allocator parameters and is called while single-threaded.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Other allocators keep their defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
