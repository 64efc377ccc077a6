//! edged's host imports (module `edged`, docs/ABI.md): the result, and what the function is granted.
//!
//! The model name and its class names come from the model declaration in the daemon's config
//! (`[models.NAME]` with `labels`), through the function's `models` grant: no file access per call.

#[link(wasm_import_module = "edged")]
extern "C" {
    fn output(ptr: *const u8, len: u32, kind: u32) -> u32;
    fn model_name(index: u32, buf: *mut u8, cap: u32, len_out: *mut u32) -> u32;
    fn model_labels(name: *const u8, name_len: u32, buf: *mut u8, cap: u32, len_out: *mut u32) -> u32;
}

pub const RESULT_JSON: u32 = 1;
const TOO_LARGE: u32 = 7;
const NOT_FOUND: u32 = 8;

/// Why a host import failed: the import and its errno.
pub struct HostError {
    pub call: &'static str,
    pub errno: u32,
}

impl HostError {
    pub fn message(&self) -> String {
        let name = match self.errno {
            1 => "invalid_argument",
            2 => "denied",
            5 => "io_error",
            7 => "too_large",
            NOT_FOUND => "not_found",
            _ => "unknown",
        };
        format!("edged.{} failed: {} ({})", self.call, name, self.errno)
    }
}

/// Sets the call's result; the errno of edged.output (0 = accepted).
pub fn set_output(data: &[u8], kind: u32) -> u32 {
    unsafe { output(data.as_ptr(), data.len() as u32, kind) }
}

/// Calls `fill(buf, cap, len_out)` with a buffer of `first` bytes, and once more with the size the host
/// asks for when it answers too_large.
fn fetch(call: &'static str, first: usize, fill: impl Fn(*mut u8, u32, *mut u32) -> u32) -> Result<Vec<u8>, HostError> {
    let mut buf = vec![0u8; first];
    for _ in 0..2 {
        let mut len = 0u32;
        match fill(buf.as_mut_ptr(), buf.len() as u32, &mut len) {
            0 => {
                buf.truncate(len as usize);
                return Ok(buf);
            }
            TOO_LARGE if (len as usize) > buf.len() => buf.resize(len as usize, 0),
            errno => return Err(HostError { call, errno }),
        }
    }
    Err(HostError { call, errno: TOO_LARGE })
}

/// The first model of the function's `models` grant, or None when it has none.
pub fn first_model() -> Result<Option<String>, HostError> {
    match fetch("model_name", 256, |buf, cap, len| unsafe { model_name(0, buf, cap, len) }) {
        Ok(name) => Ok(Some(String::from_utf8_lossy(&name).into_owned())),
        Err(HostError { errno: NOT_FOUND, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The declared class names of a granted model, one per line (line i = output i).
pub fn labels(model: &str) -> Result<String, HostError> {
    let text = fetch("model_labels", 32 * 1024, |buf, cap, len| unsafe {
        model_labels(model.as_ptr(), model.len() as u32, buf, cap, len)
    })?;
    String::from_utf8(text).map_err(|_| HostError { call: "model_labels", errno: 1 })
}
