//! classify: an edged `frame-v1` function (docs/ABI.md) that labels an image with ImageNet classes.
//!
//! Frame in (RGB8) -> resized to 224x224 here (Pillow's bilinear, see resize.rs) -> f32 NHWC tensor
//! 0..255 -> WASI-NN (`load_by_name`, inference runs natively in the host) -> top-5 JSON out:
//! `{"label", "confidence", "top": [{"label", "score"}], "model"}`.
//!
//! Nothing about the model is compiled in: the model is the first of the function's `models` grant
//! (`edged.model_name`) and its class names are the ones declared with it (`edged.model_labels`).

mod host;
mod nn;
mod resize;

use std::alloc::{alloc, Layout};
use std::fmt::Write;

const SIZE: usize = 224;
const TOP: usize = 5;
const MAX_CLASSES: usize = 100_000;

const FRAME_MAGIC: u32 = 0x3146_4445;
const HEADER: usize = 32;
const KIND_FRAME: u32 = 1;

#[no_mangle]
pub extern "C" fn edged_abi_version() -> i32 {
    1
}

/// `len` writable bytes, or 0. Never freed: every call runs in a fresh instance.
#[no_mangle]
pub extern "C" fn edged_alloc(len: i32) -> i32 {
    if len <= 0 {
        return 0;
    }
    match Layout::from_size_align(len as usize, 16) {
        Ok(layout) => unsafe { alloc(layout) as i32 },
        Err(_) => 0,
    }
}

#[no_mangle]
pub extern "C" fn edged_run(ptr: i32, len: i32) -> i32 {
    let input: &[u8] = if ptr == 0 || len <= 0 {
        &[]
    } else {
        // SAFETY: the host wrote `len` bytes at `ptr`, which edged_alloc handed out.
        unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) }
    };
    let (json, status) = match classify(input) {
        Ok(json) => (json, 0),
        Err(json) => (json, 1),
    };
    if host::set_output(json.as_bytes(), host::RESULT_JSON) != 0 {
        return 2;
    }
    status
}

fn u32_at(data: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([data[offset], data[offset + 1], data[offset + 2], data[offset + 3]])
}

fn error_json(message: &str) -> String {
    let mut out = String::from("{\"error\":");
    push_str(&mut out, message);
    out.push('}');
    out
}

fn nn_error_json(err: &nn::NnError, model: &str) -> String {
    let mut out = String::from("{\"error\":\"wasi_nn\",\"call\":\"");
    out.push_str(err.call);
    let _ = write!(out, "\",\"errno\":{},\"errno_name\":\"{}\",\"model\":", err.errno, err.name());
    push_str(&mut out, model);
    out.push('}');
    out
}

fn classify(input: &[u8]) -> Result<String, String> {
    if input.len() < HEADER || u32_at(input, 0) != FRAME_MAGIC {
        return Err(error_json("input is not an edged frame (ABI v1)"));
    }
    let kind = u32_at(input, 4);
    let (w, h, channels) = (u32_at(input, 8) as usize, u32_at(input, 12) as usize, u32_at(input, 16) as usize);
    let data_len = u32_at(input, 24) as usize;
    if kind != KIND_FRAME || channels != 3 {
        return Err(error_json("classify takes decoded RGB frames (input = \"frame\")"));
    }
    let expected = w.checked_mul(h).and_then(|p| p.checked_mul(3));
    if w == 0 || h == 0 || expected != Some(data_len) || input.len() - HEADER < data_len {
        return Err(error_json("frame size disagrees with its header"));
    }
    let pixels = &input[HEADER..HEADER + data_len];

    let model = host::first_model()
        .map_err(|e| error_json(&e.message()))?
        .ok_or_else(|| error_json("the function is granted no model (models = [...])"))?;
    let labels_text = host::labels(&model).map_err(|e| {
        error_json(&format!("no labels for model {model}: {} (declare labels in [models.{model}])", e.message()))
    })?;
    let model = model.as_str();
    let labels: Vec<&str> = labels_text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if labels.is_empty() || labels.len() > MAX_CLASSES {
        return Err(error_json(&format!("model {model} has {} labels", labels.len())));
    }

    let mut tensor = vec![0f32; SIZE * SIZE * 3];
    resize::resize_rgb_to_f32(pixels, w, h, SIZE, SIZE, &mut tensor);

    let mut scores = vec![0f32; labels.len()];
    let n = infer(model, &tensor, &mut scores).map_err(|e| nn_error_json(&e, model))?;
    if n != labels.len() {
        return Err(error_json(&format!("the model gave {n} scores for {} labels", labels.len())));
    }
    Ok(top_json(&scores, &labels, model))
}

fn infer(model: &str, tensor: &[f32], scores: &mut [f32]) -> Result<usize, nn::NnError> {
    let context = nn::Context::for_model(model)?;
    context.set_input_f32(0, &[1, SIZE as u32, SIZE as u32, 3], tensor)?;
    context.compute()?;
    context.get_output_f32(0, scores)
}

/// Indices of the `TOP` highest scores, best first (the lower index first on a tie).
fn top_k(scores: &[f32]) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(TOP + 1);
    for (i, &s) in scores.iter().enumerate() {
        let pos = best.iter().position(|&j| s > scores[j]).unwrap_or(best.len());
        if pos < TOP {
            best.insert(pos, i);
            best.truncate(TOP);
        }
    }
    best
}

fn top_json(scores: &[f32], labels: &[&str], model: &str) -> String {
    let top = top_k(scores);
    let mut out = String::with_capacity(512);
    out.push_str("{\"label\":");
    push_str(&mut out, labels[top[0]]);
    out.push_str(",\"confidence\":");
    push_f32(&mut out, scores[top[0]]);
    out.push_str(",\"top\":[");
    for (n, &i) in top.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"label\":");
        push_str(&mut out, labels[i]);
        out.push_str(",\"score\":");
        push_f32(&mut out, scores[i]);
        out.push('}');
    }
    out.push_str("],\"model\":");
    push_str(&mut out, model);
    out.push('}');
    out
}

fn push_f32(out: &mut String, value: f32) {
    if value.is_finite() {
        // Display gives the shortest text that reads back as the same f32, never an exponent.
        let _ = write!(out, "{value}");
    } else {
        out.push_str("null");
    }
}

/// A JSON string literal.
fn push_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
