//! edged function `grayscale`: an image in, its luma out, identical to Pillow's `convert("L")`.
//!
//! Two modules are built from this crate (see README.md and ../build.sh):
//! - `grayscale.wasm`, this library as a cdylib: the ABI v1 `frame-v1` reactor (`reactor`);
//! - `grayscale-cmd.wasm`, `src/bin/grayscale-cmd.rs`: the ABI v1 `wasi-command`.
//! Both share `luma` (the pixel arithmetic) and `codec` (decoding and encoding inside the sandbox).

mod codec;
mod luma;
mod reactor;
