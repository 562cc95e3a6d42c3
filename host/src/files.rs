//! Files the host writes and later relies on — the version store that sagas resume on, the
//! compile cache, a component the admin API writes into the watched directory — are written
//! durably, through this one function.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` whole or not at all, and durably: to a temporary name beside it,
/// fsynced, renamed over `path`, and the directory fsynced, so that after a crash or a power
/// loss `path` holds either its old content or the new one, never a truncated file, and a
/// rename the host acted on is not lost. Creates the directory when it is missing.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    // A name of its own per write, so that two writers of the same file never share one.
    let partial = dir.join(format!(
        ".{}.{}-{}.partial",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::write_durably;

    #[test]
    fn a_file_is_replaced_whole_and_no_partial_file_is_left() {
        let dir = std::env::temp_dir().join(format!("saga-host-files-{}", std::process::id()));
        let path = dir.join("nested").join("artifact.bin");
        write_durably(&path, b"first").expect("the first write");
        write_durably(&path, b"second").expect("the second write");
        assert_eq!(std::fs::read(&path).expect("read it back"), b"second");
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .expect("list the directory")
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["artifact.bin".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
