//! Files that hold secrets (CA keys, agent keys and SVIDs, the datastore with its join tokens)
//! and the directories around them.
//!
//! Modes are set explicitly with `fchmod`/`chmod` rather than left to `open`'s mode argument,
//! which the process umask narrows and which does nothing for a file that already exists: a
//! secret file is 0600 whatever the umask and whatever an earlier run left behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every secret file.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of directories Sigil creates for secrets and sockets.
pub const PRIVATE_DIR: u32 = 0o700;

/// Writes `data` to `path` atomically with `mode`: a temporary file in the same directory,
/// fsync, rename over `path`, fsync of the directory. A crash leaves the old contents or the
/// new ones, never a torn file; readers never see a partly written one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`, and a leftover temporary file keeps its old mode.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes sure `path` exists as a file readable and writable by its owner only: creates it empty
/// with mode 0600 if missing, or narrows the mode of an existing one. For files another library
/// creates and writes (SQLite), so they never exist with a wider mode.
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))
}

/// Narrows an existing file to 0600; a missing one is fine.
pub fn restrict_if_exists(path: &Path) -> io::Result<()> {
    match fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Why a directory cannot hold secrets.
#[derive(Debug)]
pub enum DirError {
    /// Creating or inspecting it failed.
    Io(io::Error),
    /// It is not a directory.
    NotADirectory,
    /// Others than its owner may create, remove or replace files in it.
    Writable { mode: u32 },
}

impl std::fmt::Display for DirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::NotADirectory => f.write_str("it is not a directory"),
            Self::Writable { mode } => write!(
                f,
                "it is group- or world-writable (mode {mode:04o}), so another user could \
                 replace what is in it; make it 0700 or 0750 (chmod go-w)"
            ),
        }
    }
}

impl std::error::Error for DirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Makes sure `dir` can hold secrets and sockets: creates it (and its parents) with mode 0700
/// if missing; refuses an existing directory that its group or others can write to, since
/// whoever can write there can replace a socket or key file with their own. An existing
/// directory is never chmod-ed: it may be shared on purpose (a hostPath, `/run`), and changing
/// it behind the operator's back would be a surprise.
pub fn ensure_private_dir(dir: &Path) -> Result<(), DirError> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(DirError::NotADirectory);
            }
            let mode = meta.mode() & 0o7777;
            // Even with the sticky bit (as on /tmp), others could plant files beside ours.
            if mode & 0o022 != 0 {
                return Err(DirError::Writable { mode });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(DirError::Io)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR)).map_err(DirError::Io)
        }
        Err(e) => Err(DirError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Runs `f` with the process umask set to `mask` (restored afterwards).
    fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
        // SAFETY: umask has no preconditions.
        let old = unsafe { libc::umask(mask as libc::mode_t) };
        let out = f();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        out
    }

    #[test]
    fn atomic_write_sets_mode_whatever_the_umask_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        with_umask(0, || write_atomic(&p, b"one", 0o600)).unwrap();
        assert_eq!(mode(&p), 0o600);
        // A leftover temporary file with a wide mode does not widen the result.
        let tmp = dir
            .path()
            .join(format!(".secret.tmp.{}", std::process::id()));
        fs::write(&tmp, b"junk").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn private_file_is_created_or_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        with_umask(0, || ensure_private_file(&p)).unwrap();
        assert_eq!(mode(&p), 0o600);
        fs::write(&p, b"data").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        ensure_private_file(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"data", "contents are kept");
        restrict_if_exists(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        with_umask(0, || ensure_private_dir(&new)).unwrap();
        assert_eq!(mode(&new), 0o700);

        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        for (m, ok) in [
            (0o777, false),
            (0o770, false),
            (0o702, false),
            (0o755, true),
            (0o750, true),
            (0o1777, false),
            (0o700, true),
        ] {
            fs::set_permissions(&open, fs::Permissions::from_mode(m)).unwrap();
            let r = ensure_private_dir(&open);
            assert_eq!(r.is_ok(), ok, "mode {m:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("writable"), "{e}");
            }
            // Never changed behind the operator's back.
            assert_eq!(mode(&open), m);
        }
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            ensure_private_dir(&file),
            Err(DirError::NotADirectory)
        ));
    }
}
