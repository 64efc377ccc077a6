//! The `frame-v1` exports of docs/ABI.md: `edged_abi_version`, `edged_alloc`, `edged_run`.
//!
//! A frame input (kind 1) is converted in place, header included, and handed back as an output frame
//! of one channel: no second buffer, so a 1920x1080 frame needs no memory beyond its own ~6 MB. A raw
//! input (kind 2) is decoded, converted and re-encoded here (GIF for GIF, else PNG).

use std::alloc::{alloc, Layout};
use std::slice;

use crate::codec::grayscale_encoded;
use crate::luma::luma_in_place;

const ABI_VERSION: i32 = 1;
const HEADER_LEN: usize = 32;
const MAGIC: u32 = 0x3146_4445; // b"EDF1"
const INPUT_FRAME: u32 = 1;
const INPUT_RAW: u32 = 2;
const RESULT_JSON: u32 = 1;
const RESULT_IMAGE: u32 = 2;
const RESULT_FRAME: u32 = 3;

#[link(wasm_import_module = "edged")]
extern "C" {
    /// Sets the call's result; returns an errno (0 ok).
    #[link_name = "output"]
    fn edged_output(ptr: *const u8, len: usize, kind: u32) -> u32;
}

#[no_mangle]
pub extern "C" fn edged_abi_version() -> i32 {
    ABI_VERSION
}

/// `len` writable bytes for the host's input, or 0. Never freed: each call gets a fresh instance.
#[no_mangle]
pub extern "C" fn edged_alloc(len: i32) -> i32 {
    let size = match usize::try_from(len) {
        Ok(size) if size > 0 => size,
        _ => return 0,
    };
    match Layout::from_size_align(size, 8) {
        // SAFETY: the layout has a non-zero size; a null result (memory.grow refused) becomes 0.
        Ok(layout) => unsafe { alloc(layout) as usize as i32 },
        Err(_) => 0,
    }
}

#[no_mangle]
pub extern "C" fn edged_run(ptr: i32, len: i32) -> i32 {
    let len = match usize::try_from(len) {
        Ok(len) if ptr != 0 => len,
        _ => return fail("edged_run needs a non-null pointer and a non-negative length"),
    };
    // SAFETY: the host passes back the block edged_alloc gave it, `len` bytes of which it filled.
    let input = unsafe { slice::from_raw_parts_mut(ptr as u32 as usize as *mut u8, len) };
    match run(input) {
        Ok(()) => 0,
        Err(message) => fail(&message),
    }
}

fn run(input: &mut [u8]) -> Result<(), String> {
    if input.len() < HEADER_LEN {
        return Err(format!("input of {} bytes is shorter than the 32-byte header", input.len()));
    }
    let field = |i: usize| u32::from_le_bytes([input[4 * i], input[4 * i + 1], input[4 * i + 2], input[4 * i + 3]]);
    let (magic, kind, width, height, channels, format, data_len) =
        (field(0), field(1), field(2), field(3), field(4), field(5), field(6));
    if magic != MAGIC {
        return Err(format!("bad header magic {:#010x}, expected {:#010x} (EDF1)", magic, MAGIC));
    }
    let available = input.len() - HEADER_LEN;
    if data_len as usize != available {
        return Err(format!("header says {} data bytes, the input has {}", data_len, available));
    }
    match kind {
        INPUT_FRAME => gray_frame(input, width, height, channels, format),
        INPUT_RAW => {
            let encoded = grayscale_encoded(&input[HEADER_LEN..]).map_err(|e| e.to_string())?;
            output(&encoded, RESULT_IMAGE)
        }
        other => Err(format!("unknown input kind {}, expected 1 (frame) or 2 (raw)", other)),
    }
}

/// Converts the frame in `input` in place and outputs it as a one-channel frame.
fn gray_frame(input: &mut [u8], width: u32, height: u32, channels: u32, format: u32) -> Result<(), String> {
    // Input frames are RGB8 (docs/ABI.md); grey and RGBA frames cost nothing extra to accept.
    if !matches!(channels, 1 | 3 | 4) {
        return Err(format!("frame has {} channels, expected 1, 3 or 4", channels));
    }
    let pixels = u64::from(width) * u64::from(height);
    let expected = pixels * u64::from(channels);
    if pixels == 0 || expected != (input.len() - HEADER_LEN) as u64 {
        return Err(format!(
            "a {}x{}x{} frame needs {} data bytes, the input has {}",
            width,
            height,
            channels,
            expected,
            input.len() - HEADER_LEN
        ));
    }
    let n = luma_in_place(&mut input[HEADER_LEN..], channels as usize);
    let header = [MAGIC, INPUT_FRAME, width, height, 1, format, n as u32, 0];
    for (slot, value) in input.chunks_exact_mut(4).zip(header.iter()) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    output(&input[..HEADER_LEN + n], RESULT_FRAME)
}

fn output(bytes: &[u8], kind: u32) -> Result<(), String> {
    // SAFETY: the host reads `bytes` from this module's memory during the call; nothing else runs.
    match unsafe { edged_output(bytes.as_ptr(), bytes.len(), kind) } {
        0 => Ok(()),
        errno => Err(format!("edged.output refused the {}-byte result (errno {})", bytes.len(), errno)),
    }
}

/// Sets `{"error": message}` as the result (the host makes it the failure's detail) and returns 1.
fn fail(message: &str) -> i32 {
    let json = format!("{{\"error\": \"{}\"}}", json_escape(message));
    // Refused only if a result is already set; the call fails either way.
    let _ = output(json.as_bytes(), RESULT_JSON);
    1
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}
