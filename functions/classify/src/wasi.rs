//! The two things std does not offer: listing the preopened directories, and reading a small file in
//! as few WASI calls as possible (each file operation is a round trip to the host's I/O threads).

use std::io::Read;

#[repr(C)]
struct Prestat {
    tag: u8,
    name_len: u32,
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn fd_prestat_get(fd: u32, out: *mut Prestat) -> u32;
    fn fd_prestat_dir_name(fd: u32, path: *mut u8, len: u32) -> u32;
}

const PREOPEN_DIR: u8 = 0;
const FIRST_PREOPEN_FD: u32 = 3;
const MAX_PREOPENS: u32 = 64;

/// The name below `prefix` of the first preopened directory whose guest path starts with it.
pub fn preopen_under(prefix: &str) -> Option<String> {
    for fd in FIRST_PREOPEN_FD..FIRST_PREOPEN_FD + MAX_PREOPENS {
        let mut stat = Prestat { tag: 0, name_len: 0 };
        // Preopens are numbered from 3 without gaps: the first error ends the list.
        if unsafe { fd_prestat_get(fd, &mut stat) } != 0 {
            return None;
        }
        if stat.tag != PREOPEN_DIR || stat.name_len as usize > 4096 {
            continue;
        }
        let mut name = vec![0u8; stat.name_len as usize];
        if unsafe { fd_prestat_dir_name(fd, name.as_mut_ptr(), stat.name_len) } != 0 {
            continue;
        }
        let name = String::from_utf8_lossy(&name);
        let name = name.trim_end_matches('\0').trim_end_matches('/');
        if let Some(rest) = name.strip_prefix(prefix) {
            if !rest.is_empty() && !rest.contains('/') {
                return Some(rest.to_string());
            }
        }
    }
    None
}

/// A small UTF-8 file: one read for files under 64 KiB (std would also stat the file and read again).
pub fn read_text(path: &str) -> std::io::Result<String> {
    const FIRST: usize = 64 * 1024;
    let mut file = std::fs::File::open(path)?;
    let mut data = vec![0u8; FIRST];
    let n = file.read(&mut data)?;
    data.truncate(n);
    if n == FIRST {
        file.read_to_end(&mut data)?;
    }
    String::from_utf8(data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
