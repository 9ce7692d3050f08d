//! Appending short byte runs to a buffer without a call into libc.
//!
//! Tagging copies a few short runs per log line (a prefix, the line, a newline). `Vec`'s
//! `extend_from_slice` hands each run to the C library's `memcpy`; glibc's is quick for short
//! runs, but musl's (the static build that ships) starts every copy with `rep movsq` and byte
//! loops, which costs more than the copy itself at log-line sizes: it halved the tagger's
//! throughput. `put` copies short runs with a few unaligned 32-, 16-, 8-, 4- or 1-byte moves
//! that the compiler turns into plain register loads and stores, and leaves long runs to
//! `memcpy`.

use std::ptr;

/// Runs at least this long go to `memcpy`, which is as good as anything from here on.
const LONG: usize = 512;

/// Appends `src` to `out`.
#[inline(always)]
pub fn put(out: &mut Vec<u8>, src: &[u8]) {
    let n = src.len();
    if n >= LONG {
        out.extend_from_slice(src);
        return;
    }
    out.reserve(n);
    let len = out.len();
    // SAFETY: `reserve` made room for `n` more bytes after `len`; `src` is a separate borrow,
    // so the ranges cannot overlap; `copy_short` writes exactly `dst[..n]`, so every byte up
    // to the new length is initialised.
    unsafe {
        copy_short(src.as_ptr(), out.as_mut_ptr().add(len), n);
        out.set_len(len + n);
    }
}

/// Copies `n < LONG` bytes. Each size class moves its first and last `W` bytes (the two may
/// overlap), so no byte-by-byte tail loop is needed.
///
/// # Safety
/// `src[..n]` readable, `dst[..n]` writable, the two not overlapping.
#[inline(always)]
unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    /// # Safety
    /// `src[at..at + size_of::<T>()]` readable, `dst[at..at + size_of::<T>()]` writable.
    unsafe fn mv<T: Copy>(src: *const u8, dst: *mut u8, at: usize) {
        // SAFETY: the caller keeps `at + size_of::<T>()` within both ranges.
        unsafe { ptr::write_unaligned(dst.add(at).cast::<T>(), ptr::read_unaligned(src.add(at).cast::<T>())) }
    }
    // SAFETY: for every `mv` below, each offset plus the width stays within `n`, and the
    // caller's `src[..n]` and `dst[..n]` are valid and apart.
    unsafe {
        if n >= 32 {
            let mut at = 0;
            while at + 32 < n {
                mv::<[u8; 32]>(src, dst, at);
                at += 32;
            }
            mv::<[u8; 32]>(src, dst, n - 32);
        } else if n >= 16 {
            mv::<[u8; 16]>(src, dst, 0);
            mv::<[u8; 16]>(src, dst, n - 16);
        } else if n >= 8 {
            mv::<u64>(src, dst, 0);
            mv::<u64>(src, dst, n - 8);
        } else if n >= 4 {
            mv::<u32>(src, dst, 0);
            mv::<u32>(src, dst, n - 4);
        } else if n > 0 {
            mv::<u8>(src, dst, 0);
            mv::<u8>(src, dst, n / 2);
            mv::<u8>(src, dst, n - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_every_length_at_every_offset() {
        let src: Vec<u8> = (0..=255u8).cycle().take(2 * LONG + 7).collect();
        for start in 0..17 {
            for n in 0..=(LONG + 20).min(src.len() - start) {
                let mut out = b"head".to_vec();
                put(&mut out, &src[start..start + n]);
                assert_eq!(&out[..4], b"head");
                assert_eq!(&out[4..], &src[start..start + n], "start {start}, length {n}");
            }
        }
    }

    #[test]
    fn grows_the_buffer() {
        let mut out = Vec::new();
        for i in 0..1000u32 {
            put(&mut out, &i.to_le_bytes()[..(i % 5) as usize]);
        }
        let want: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()[..(i % 5) as usize].to_vec()).collect();
        assert_eq!(out, want);
    }
}
