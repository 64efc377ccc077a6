//! ABI v1 `wasi-command` (docs/ABI.md): an image on stdin, its grey version on stdout (GIF for a GIF,
//! PNG otherwise); on failure a message on stderr and exit status 1.

// The bin shares the library's sources, not the library: linking it would re-export the reactor.
#[path = "../codec.rs"]
mod codec;
#[path = "../luma.rs"]
mod luma;

use std::io::{self, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("grayscale: {}", message);
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut input = Vec::new();
    io::stdin().lock().read_to_end(&mut input).map_err(|e| format!("cannot read stdin: {}", e))?;
    let output = codec::grayscale_encoded(&input).map_err(|e| e.to_string())?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(&output).and_then(|()| stdout.flush()).map_err(|e| format!("cannot write stdout: {}", e))
}
