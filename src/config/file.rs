//! Reading the files a config names (the config itself, keys, certificates, trust bundles)
//! without letting a special file stall or exhaust the process.
//!
//! A path may name anything: a FIFO (whose `open` blocks until a writer comes, so a reload
//! would hang for good), `/dev/zero` (endless: reading it grew the process by gigabytes), a
//! folder. [`read`] therefore `stat`s first (following links) and reads only regular files,
//! opens without blocking (a file swapped for a FIFO between the `stat` and the `open` is
//! caught by an `fstat` on what was opened), and reads at most a cap: [`SMALL_CAP`] for the
//! config, keys and certificates, [`BUNDLE_CAP`] for a trust bundle such as
//! `/etc/ssl/certs/ca-certificates.crt`.

use std::io::{self, Read as _};
use std::path::Path;

/// At most this much is read from the config, a key or a certificate file (1 MiB).
pub const SMALL_CAP: u64 = 1 << 20;

/// At most this much is read from a trust bundle (16 MiB; Debian's
/// `ca-certificates.crt` is about 220 KiB).
pub const BUNDLE_CAP: u64 = 16 << 20;

/// Reads `path` when it is a regular file (after following links) of at most `cap` bytes.
/// Anything else is an [`io::ErrorKind::InvalidInput`] error whose text names the cause.
pub fn read(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    check(&meta, cap)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // A FIFO put in place after the stat must not block the open.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    check(&meta, cap)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte more than the cap tells a file that grew past it since the stat.
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large(cap));
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read(path, cap)?).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn check(meta: &std::fs::Metadata, cap: u64) -> io::Result<()> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({}): name a regular file, or a link to one", kind(meta)),
        ));
    }
    if meta.len() > cap {
        return Err(too_large(cap));
    }
    Ok(())
}

fn too_large(cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("larger than {} MiB, more than such a file ever needs: is it the right file?", cap >> 20),
    )
}

/// What a non-regular file is, in words.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a file"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_regular_files_within_the_cap_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.pem");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(read(&f, 3).unwrap(), b"abc");
        let big = read(&f, 2).unwrap_err();
        assert!(big.to_string().contains("larger than"), "{big}");
        let folder = read(dir.path(), SMALL_CAP).unwrap_err();
        assert!(folder.to_string().contains("a folder"), "{folder}");
        assert_eq!(read(&dir.path().join("none"), 1).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read(&fifo, SMALL_CAP).unwrap_err().to_string().contains("a FIFO"));
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read(&zero, SMALL_CAP).unwrap_err().to_string().contains("a device"));
    }
}
