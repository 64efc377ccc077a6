//! Luma exactly as Pillow's `Image.convert("L")` computes it.
//!
//! Pillow uses ITU-R 601-2 weights in 16.16 fixed point with rounding:
//! `L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16`. The weights sum to 65536, so white stays 255.
//! (The image crate's own `grayscale()` uses other weights and would not match the host.)

const WR: u32 = 19595;
const WG: u32 = 38470;
const WB: u32 = 7471;
const ROUND: u32 = 0x8000;

/// The luma of one RGB pixel.
#[inline(always)]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * WR + u32::from(g) * WG + u32::from(b) * WB + ROUND) >> 16) as u8
}

/// Replaces the pixels in `buf` (`stride` bytes each) by one byte each, `f(pixel)`, written to the
/// front of `buf`; returns how many pixels there were. No second buffer is needed: pixel `i` is read
/// from `i * stride` before byte `i` is written, and `i <= i * stride`.
#[inline(always)]
pub fn reduce_in_place<F: Fn(&[u8]) -> u8>(buf: &mut [u8], stride: usize, f: F) -> usize {
    let n = buf.len() / stride;
    let mut read = 0;
    for write in 0..n {
        let y = f(&buf[read..read + stride]);
        buf[write] = y;
        read += stride;
    }
    n
}

/// Luma of interleaved 8-bit pixels with `channels` bytes each (1 = L, 2 = LA, 3 = RGB, 4 = RGBA),
/// in place; returns the pixel count. Alpha is ignored, as Pillow ignores it.
pub fn luma_in_place(buf: &mut [u8], channels: usize) -> usize {
    match channels {
        1 => buf.len(),
        2 => reduce_in_place(buf, 2, |p| p[0]),
        3 => rgb_in_place::<3>(buf),
        4 => rgb_in_place::<4>(buf),
        _ => 0,
    }
}

/// The hot loop of the frame path, in blocks through a small stack buffer: each block reads
/// `C * BLOCK` bytes and writes `BLOCK`, and with fixed-size chunks the compiler drops the bounds
/// checks (a 640x480 frame: 0.35 ms instead of 0.55 ms with `reduce_in_place`). RGB frames on wasm32
/// go through `simd::rgb_head` first, which leaves only the last few pixels to this loop.
fn rgb_in_place<const C: usize>(buf: &mut [u8]) -> usize {
    const BLOCK: usize = 4096;
    let n = buf.len() / C;
    let mut block = [0u8; BLOCK];
    #[cfg(target_arch = "wasm32")]
    let mut done = if C == 3 { simd::rgb_head(buf, n) } else { 0 };
    #[cfg(not(target_arch = "wasm32"))]
    let mut done = 0;
    while done < n {
        let count = BLOCK.min(n - done);
        let src = &buf[done * C..(done + count) * C];
        for (out, p) in block[..count].iter_mut().zip(src.chunks_exact(C)) {
            *out = luma(p[0], p[1], p[2]);
        }
        buf[done..done + count].copy_from_slice(&block[..count]);
        done += count;
    }
    n
}

/// Wasm SIMD (simd128) luma of RGB pixels, 16 at a time; the same integer arithmetic as `luma`, so the
/// same bytes (a 640x480 frame: ~0.1 ms instead of ~0.35 ms). Wasmtime runs simd128 by default.
#[cfg(target_arch = "wasm32")]
mod simd {
    use core::arch::wasm32::*;

    use super::{ROUND, WB, WG, WR};

    /// Converts the first pixels of `buf` (RGB, `n` of them) in place, 16 at a time, and returns how many
    /// it did (a multiple of 16). Pixel block `k` is read from `48 * k` before `16 * k` is written, and
    /// `16 * (k + 1) <= 48 * (k + 1)`: nothing is overwritten before it is read, as in `reduce_in_place`.
    pub fn rgb_head(buf: &mut [u8], n: usize) -> usize {
        let blocks = n / 16;
        assert!(buf.len() >= blocks * 48);
        // SAFETY: every load reads 48 bytes at 48 * k < 48 * blocks <= buf.len(), every store writes
        // 16 bytes at 16 * k, inside the same slice; v128 loads and stores need no alignment.
        unsafe { rgb_blocks(buf.as_mut_ptr(), blocks) };
        blocks * 16
    }

    #[target_feature(enable = "simd128")]
    unsafe fn rgb_blocks(base: *mut u8, blocks: usize) {
        let (wr, wg, wb) = (u16x8_splat(WR as u16), u16x8_splat(WG as u16), u16x8_splat(WB as u16));
        let round = u32x4_splat(ROUND);
        for k in 0..blocks {
            let src = base.add(48 * k);
            let a = v128_load(src as *const v128);
            let b = v128_load(src.add(16) as *const v128);
            let c = v128_load(src.add(32) as *const v128);
            // Deinterleave: byte i of r/g/b is pixel i's red/green/blue. 16 + j picks byte j of the second operand.
            let r = i8x16_shuffle::<0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0>(a, b);
            let r = i8x16_shuffle::<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29>(r, c);
            let g = i8x16_shuffle::<1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 0, 0, 0, 0, 0>(a, b);
            let g = i8x16_shuffle::<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 18, 21, 24, 27, 30>(g, c);
            let bl = i8x16_shuffle::<2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 0, 0, 0, 0, 0>(a, b);
            let bl = i8x16_shuffle::<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 19, 22, 25, 28, 31>(bl, c);
            let low = luma8(u16x8_extend_low_u8x16(r), u16x8_extend_low_u8x16(g), u16x8_extend_low_u8x16(bl),
                            wr, wg, wb, round);
            let high = luma8(u16x8_extend_high_u8x16(r), u16x8_extend_high_u8x16(g),
                             u16x8_extend_high_u8x16(bl), wr, wg, wb, round);
            v128_store(base.add(16 * k) as *mut v128, u8x16_narrow_i16x8(low, high));
        }
    }

    /// Luma of 8 pixels given as u16 lanes, as 8 i16 lanes (each 0..=255).
    #[inline(always)]
    unsafe fn luma8(r: v128, g: v128, b: v128, wr: v128, wg: v128, wb: v128, round: v128) -> v128 {
        // u16 x u16 -> u32 products are exact, and their sum with ROUND stays below 2^32.
        let lo = i32x4_add(
            i32x4_add(u32x4_extmul_low_u16x8(r, wr), u32x4_extmul_low_u16x8(g, wg)),
            i32x4_add(u32x4_extmul_low_u16x8(b, wb), round),
        );
        let hi = i32x4_add(
            i32x4_add(u32x4_extmul_high_u16x8(r, wr), u32x4_extmul_high_u16x8(g, wg)),
            i32x4_add(u32x4_extmul_high_u16x8(b, wb), round),
        );
        i16x8_narrow_i32x4(u32x4_shr(lo, 16), u32x4_shr(hi, 16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes() {
        assert_eq!(luma(0, 0, 0), 0);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn in_place_rgb() {
        let mut buf = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 10, 10];
        let n = luma_in_place(&mut buf, 3);
        assert_eq!(&buf[..n], &[76, 150, 29, 10]);
    }
}
