//! The floor for one durable write on this disk: 4 KiB write + fdatasync.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct FsyncProbe {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn probe(dir: &Path, samples: usize) -> Result<FsyncProbe> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(".nines-fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        took.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 - 1.0) * q).round() as usize];
    Ok(FsyncProbe {
        samples,
        p50_us: at(0.5),
        p99_us: at(0.99),
    })
}
