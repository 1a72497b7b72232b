//! Small metadata files (vote, purged id) written atomically and durably:
//! temp file, fsync, rename, fsync of the directory. Content carries a CRC so
//! a damaged file is detected instead of misread.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{io_err, LogError};
use crate::segment::{decode, encode};

pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), LogError> {
    let payload = encode(value)?;
    let mut bytes = crc32c::crc32c(&payload).to_le_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    sync_dir(dir)
}

pub fn read<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, LogError> {
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let corrupt = |reason: &str| LogError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason: reason.to_string(),
    };
    if bytes.len() < 4 {
        return Err(corrupt("file too short"));
    }
    let (crc, payload) = bytes.split_at(4);
    if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != crc32c::crc32c(payload) {
        return Err(corrupt("checksum mismatch"));
    }
    decode(payload)
        .map(Some)
        .map_err(|e| corrupt(&e.to_string()))
}

pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
