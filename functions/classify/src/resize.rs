//! Bilinear resize of packed RGB8, computed the way Pillow's `Image.resize(size, Image.BILINEAR)` does
//! it (a separable triangle filter widened by the scale factor when shrinking, fixed-point weights with
//! 22 fractional bits, a horizontal pass into an 8-bit buffer, then a vertical pass), so the tensor the
//! function builds is the one a Python caller using Pillow builds, byte for byte (the tests check it).
//!
//! Both passes use Wasm SIMD (simd128, on by default in wasmtime and WasmEdge): the horizontal pass
//! multiplies one pixel's three channels per instruction, the vertical pass sixteen bytes of a row.

use core::arch::wasm32::*;
use core::ptr::{read_unaligned, write_unaligned};

const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Filter taps of one axis: output pixel `i` reads source pixels `first[i] .. first[i] + count[i]`
/// with weights `weights[i * stride ..][.. count[i]]`.
struct Taps {
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
    stride: usize,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle's own support is 1
    let stride = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filter_scale;
    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * stride];
    let mut k = vec![0f64; stride];
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // `as` truncates toward zero like C's (int) cast; both ends are then clamped.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = hi.saturating_sub(lo).min(stride);
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(n) {
            *w = triangle(((x + lo) as f64 - center + 0.5) * inv);
            total += *w;
        }
        let row = &mut weights[i * stride..i * stride + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if total != 0.0 { w / total } else { w };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if fixed < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        first.push(lo);
        count.push(n);
    }
    Taps { first, count, weights, stride }
}

/// Fixed point to 0..255 (Pillow's clip8), four lanes at a time.
#[inline(always)]
fn clip8(acc: v128) -> v128 {
    i32x4_min(i32x4_max(i32x4_shr(acc, PRECISION_BITS), i32x4_splat(0)), i32x4_splat(255))
}

/// One pixel's R, G, B (and one byte more, ignored) as four i32 lanes.
#[inline(always)]
unsafe fn pixel(p: *const u8) -> v128 {
    let word = read_unaligned(p.cast::<u32>());
    u32x4_extend_low_u16x8(u16x8_extend_low_u8x16(u32x4_splat(word)))
}

/// Horizontal pass over one row. `out` has one spare byte after the row: each pixel is stored as four
/// bytes and the fourth is overwritten by the next pixel.
#[target_feature(enable = "simd128")]
unsafe fn horizontal_row(row: &[u8], out: &mut [u8], t: &Taps) {
    let last = row.len() / 3 - 1;
    let src = row.as_ptr();
    let dst = out.as_mut_ptr();
    for x in 0..t.first.len() {
        let lo = t.first[x];
        let n = t.count[x];
        let ks = &t.weights[x * t.stride..x * t.stride + n];
        let mut acc = i32x4_splat(HALF);
        // Reading four bytes of the row's last pixel would leave the row: that tap is read as three.
        let whole = if lo + n > last { n - 1 } else { n };
        // Two taps per iteration: half the loop back-edges, each of which carries an epoch check.
        let p = src.add(lo * 3);
        let mut i = 0;
        while i + 1 < whole {
            let a = i32x4_mul(pixel(p.add(i * 3)), i32x4_splat(ks[i]));
            let b = i32x4_mul(pixel(p.add(i * 3 + 3)), i32x4_splat(ks[i + 1]));
            acc = i32x4_add(acc, i32x4_add(a, b));
            i += 2;
        }
        if i < whole {
            acc = i32x4_add(acc, i32x4_mul(pixel(p.add(i * 3)), i32x4_splat(ks[i])));
        }
        if whole < n {
            let p = src.add(last * 3);
            let rgb = u32x4(u32::from(*p), u32::from(*p.add(1)), u32::from(*p.add(2)), 0);
            acc = i32x4_add(acc, i32x4_mul(rgb, i32x4_splat(ks[whole])));
        }
        let bytes = u8x16_narrow_i16x8(i16x8_narrow_i32x4(clip8(acc), acc), acc);
        write_unaligned(dst.add(x * 3).cast::<u32>(), i32x4_extract_lane::<0>(bytes) as u32);
    }
}

/// Vertical pass for sixteen bytes of one output row: `base` is its first source row.
#[inline(always)]
unsafe fn vertical_chunk(base: *const u8, stride: usize, ks: &[i32]) -> [v128; 4] {
    let mut a = [i32x4_splat(HALF); 4];
    #[inline(always)]
    unsafe fn tap(a: &mut [v128; 4], row: *const u8, k: i32) {
        let v = read_unaligned(row.cast::<v128>());
        let kv = i32x4_splat(k);
        let lo16 = u16x8_extend_low_u8x16(v);
        let hi16 = u16x8_extend_high_u8x16(v);
        a[0] = i32x4_add(a[0], i32x4_mul(u32x4_extend_low_u16x8(lo16), kv));
        a[1] = i32x4_add(a[1], i32x4_mul(u32x4_extend_high_u16x8(lo16), kv));
        a[2] = i32x4_add(a[2], i32x4_mul(u32x4_extend_low_u16x8(hi16), kv));
        a[3] = i32x4_add(a[3], i32x4_mul(u32x4_extend_high_u16x8(hi16), kv));
    }
    // Two taps per iteration, as in horizontal_row.
    let mut t = 0;
    while t + 1 < ks.len() {
        tap(&mut a, base.add(t * stride), ks[t]);
        tap(&mut a, base.add((t + 1) * stride), ks[t + 1]);
        t += 2;
    }
    if t < ks.len() {
        tap(&mut a, base.add(t * stride), ks[t]);
    }
    [clip8(a[0]), clip8(a[1]), clip8(a[2]), clip8(a[3])]
}

#[inline(always)]
unsafe fn vertical_byte(base: *const u8, stride: usize, ks: &[i32]) -> u8 {
    let mut acc = HALF;
    for (t, &k) in ks.iter().enumerate() {
        acc += i32::from(*base.add(t * stride)) * k;
    }
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Vertical pass for one output row of `stride` bytes, from source rows `lo ..` of `src`, into f32.
#[target_feature(enable = "simd128")]
unsafe fn vertical_row_f32(src: &[u8], stride: usize, lo: usize, ks: &[i32], out: &mut [f32]) {
    let base = src.as_ptr().add(lo * stride);
    let dst = out.as_mut_ptr();
    let chunks = stride / 16;
    for c in 0..chunks {
        let a = vertical_chunk(base.add(c * 16), stride, ks);
        for (j, v) in a.iter().enumerate() {
            write_unaligned(dst.add(c * 16 + j * 4).cast::<v128>(), f32x4_convert_i32x4(*v));
        }
    }
    for i in chunks * 16..stride {
        *dst.add(i) = f32::from(vertical_byte(base.add(i), stride, ks));
    }
}

/// The same into bytes (the first pass when the vertical pass goes first).
#[target_feature(enable = "simd128")]
unsafe fn vertical_row_u8(src: &[u8], stride: usize, lo: usize, ks: &[i32], out: &mut [u8]) {
    let base = src.as_ptr().add(lo * stride);
    let dst = out.as_mut_ptr();
    let chunks = stride / 16;
    for c in 0..chunks {
        let a = vertical_chunk(base.add(c * 16), stride, ks);
        let bytes = u8x16_narrow_i16x8(i16x8_narrow_i32x4(a[0], a[1]), i16x8_narrow_i32x4(a[2], a[3]));
        write_unaligned(dst.add(c * 16).cast::<v128>(), bytes);
    }
    for i in chunks * 16..stride {
        *dst.add(i) = vertical_byte(base.add(i), stride, ks);
    }
}

/// Resize `src` (`w` x `h` packed RGB8) to `out_w` x `out_h` and store every channel value, as f32 in
/// 0..255, in `dst` (`out_w * out_h * 3` values, NHWC).
pub fn resize_rgb_to_f32(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize, dst: &mut [f32]) {
    assert!(w > 0 && h > 0 && src.len() >= w * h * 3 && dst.len() >= out_w * out_h * 3);
    if w == out_w && h == out_h {
        // Already the size (the host resized it: `resize = "bilinear"`). Pillow's filter at scale 1 is the
        // identity (weights 1 and 0), so the tensor is the pixels as they are.
        for (d, &b) in dst.iter_mut().zip(&src[..w * h * 3]) {
            *d = f32::from(b);
        }
        return;
    }
    let horiz = taps(w, out_w);
    let vert = taps(h, out_h);
    let in_stride = w * 3;
    let stride = out_w * 3;
    // Pillow 13 filters vertically first when that shrinks the image by more than twice what the
    // horizontal pass would (measured against its output: the rule decides the 8-bit rounding between
    // the passes, so it must be the same for the tensor to be the same).
    let vertical_first = w != out_w && h != out_h && h.saturating_sub(out_h) > 2 * w.saturating_sub(out_w);
    if vertical_first {
        let mut tmp = vec![0u8; out_h * in_stride + 16];
        for y in 0..out_h {
            let ks = &vert.weights[y * vert.stride..y * vert.stride + vert.count[y]];
            // SAFETY: source rows first[y] .. first[y] + count[y] exist.
            unsafe { vertical_row_u8(src, in_stride, vert.first[y], ks, &mut tmp[y * in_stride..]) };
        }
        let mut row = vec![0u8; stride + 1];
        for (y, out_row) in dst.chunks_exact_mut(stride).enumerate().take(out_h) {
            // SAFETY: `row` has the spare byte horizontal_row needs.
            unsafe { horizontal_row(&tmp[y * in_stride..(y + 1) * in_stride], &mut row, &horiz) };
            for (d, &b) in out_row.iter_mut().zip(&row[..stride]) {
                *d = f32::from(b);
            }
        }
        return;
    }
    // Horizontal first, over only the source rows the vertical pass reads.
    let row_first = vert.first[0];
    let row_last = vert.first[out_h - 1] + vert.count[out_h - 1];
    let rows = row_last - row_first;
    let mut tmp = vec![0u8; rows * stride + 16];
    if w == out_w {
        tmp[..rows * stride].copy_from_slice(&src[row_first * in_stride..row_last * in_stride]);
    } else {
        for y in 0..rows {
            let row = &src[(row_first + y) * in_stride..(row_first + y + 1) * in_stride];
            // SAFETY: the spare byte after each row is the next row's first (written later) or one
            // of tmp's spare bytes.
            unsafe { horizontal_row(row, &mut tmp[y * stride..(y + 1) * stride + 1], &horiz) };
        }
    }
    for (y, out_row) in dst.chunks_exact_mut(stride).enumerate().take(out_h) {
        let ks = &vert.weights[y * vert.stride..y * vert.stride + vert.count[y]];
        // SAFETY: rows first[y] - row_first .. + count[y] of tmp were filled above.
        unsafe { vertical_row_f32(&tmp, stride, vert.first[y] - row_first, ks, out_row) };
    }
}
