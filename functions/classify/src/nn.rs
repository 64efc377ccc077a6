//! The WASI-NN preview1 imports (`wasi_ephemeral_nn`), declared by hand: the guest side of the standard
//! API, so this module runs on any runtime that implements it (wasmtime, WasmEdge, edged).

/// A tensor as the preview1 ABI lays it out: 20 bytes, the type one byte at offset 8.
#[repr(C)]
struct Tensor {
    dims: *const u32,
    dims_len: u32,
    ty: u8,
    data: *const u8,
    data_len: u32,
}

#[link(wasm_import_module = "wasi_ephemeral_nn")]
extern "C" {
    fn load_by_name(name: *const u8, name_len: u32, graph: *mut u32) -> u32;
    fn init_execution_context(graph: u32, context: *mut u32) -> u32;
    fn set_input(context: u32, index: u32, tensor: *const Tensor) -> u32;
    fn compute(context: u32) -> u32;
    fn get_output(context: u32, index: u32, out: *mut u8, out_max: u32, written: *mut u32) -> u32;
}

pub const TYPE_F32: u8 = 1;

/// A failed WASI-NN call: which import and its errno.
pub struct NnError {
    pub call: &'static str,
    pub errno: u32,
}

impl NnError {
    pub fn name(&self) -> &'static str {
        match self.errno {
            1 => "invalid_argument",
            2 => "invalid_encoding",
            3 => "missing_memory",
            4 => "busy",
            5 => "runtime_error",
            6 => "unsupported_operation",
            7 => "too_large",
            8 => "not_found",
            _ => "unknown",
        }
    }
}

fn check(call: &'static str, errno: u32) -> Result<(), NnError> {
    if errno == 0 {
        Ok(())
    } else {
        Err(NnError { call, errno })
    }
}

/// An execution context of a model loaded by name.
pub struct Context(u32);

impl Context {
    pub fn for_model(name: &str) -> Result<Context, NnError> {
        let mut graph = 0u32;
        check("load_by_name", unsafe { load_by_name(name.as_ptr(), name.len() as u32, &mut graph) })?;
        let mut context = 0u32;
        check("init_execution_context", unsafe { init_execution_context(graph, &mut context) })?;
        Ok(Context(context))
    }

    pub fn set_input_f32(&self, index: u32, dims: &[u32], data: &[f32]) -> Result<(), NnError> {
        let tensor = Tensor {
            dims: dims.as_ptr(),
            dims_len: dims.len() as u32,
            ty: TYPE_F32,
            data: data.as_ptr().cast(),
            data_len: (data.len() * 4) as u32,
        };
        check("set_input", unsafe { set_input(self.0, index, &tensor) })
    }

    pub fn compute(&self) -> Result<(), NnError> {
        check("compute", unsafe { compute(self.0) })
    }

    /// Output `index` as f32 values, into `out`; returns how many were written.
    pub fn get_output_f32(&self, index: u32, out: &mut [f32]) -> Result<usize, NnError> {
        let mut written = 0u32;
        let max = (out.len() * 4) as u32;
        check("get_output", unsafe { get_output(self.0, index, out.as_mut_ptr().cast(), max, &mut written) })?;
        Ok(written as usize / 4)
    }
}
