//! The agent's persisted state (KeyManager "disk"): its SVID, key and trust bundle.
//!
//! Join tokens are single-use, so an agent that forgot its SVID on restart could never come back
//! without an operator minting a new token. Files are written atomically (temp file, fsync,
//! rename, fsync the directory) so a crash mid-write leaves the previous state, never a torn one;
//! the key file is 0600 from the moment it is created.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::AgentSvid;
use crate::keys::PrivateKeyDer;
use crate::svid;

const SVID_FILE: &str = "agent_svid.pem";
const KEY_FILE: &str = "agent_key.pem";
const BUNDLE_FILE: &str = "bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Files under the KeyManager directory.
#[derive(Clone, Debug)]
pub struct DiskStore {
    dir: PathBuf,
    /// Test-only: the threads that wrote (writes fsync, so they belong off the async workers).
    #[cfg(test)]
    pub(crate) writers: std::sync::Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>,
}

/// What a previous run left behind.
#[derive(Debug)]
pub struct Persisted {
    pub svid: AgentSvid,
    pub roots: Vec<Vec<u8>>,
}

// === impl DiskStore ===

impl DiskStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            #[cfg(test)]
            writers: Default::default(),
        }
    }

    #[cfg(test)]
    fn record_write(&self) {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::thread::current().id());
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the persisted SVID, key and bundle; `None` if there is nothing (complete) to load.
    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let (svid_path, key_path, bundle_path) = (
            self.dir.join(SVID_FILE),
            self.dir.join(KEY_FILE),
            self.dir.join(BUNDLE_FILE),
        );
        let Some(svid_pem) = read_optional(&svid_path)? else {
            return Ok(None);
        };
        let Some(key_pem) = read_optional(&key_path)? else {
            return Ok(None);
        };
        let Some(bundle_pem) = read_optional(&bundle_path)? else {
            return Ok(None);
        };
        let invalid = |path: &Path, message: String| StoreError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let chain = svid::certs_from_pem(&svid_pem).map_err(|e| invalid(&svid_path, e.0))?;
        let key = PrivateKeyDer::from_pem(&key_pem)
            .ok_or_else(|| invalid(&key_path, "no PRIVATE KEY block".into()))?;
        let roots = svid::certs_from_pem(&bundle_pem).map_err(|e| invalid(&bundle_path, e.0))?;
        if roots.is_empty() {
            return Err(invalid(&bundle_path, "no certificates".into()));
        }
        let svid = AgentSvid::new(chain, key).map_err(|e| invalid(&svid_path, e.0))?;
        Ok(Some(Persisted { svid, roots }))
    }

    /// The persisted trust bundle alone (kept current by the sync), if there is one: what a
    /// new attestation verifies the server with.
    pub fn load_bundle(&self) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let path = self.dir.join(BUNDLE_FILE);
        let Some(pem) = read_optional(&path)? else {
            return Ok(None);
        };
        let roots = svid::certs_from_pem(&pem).map_err(|e| StoreError::Invalid {
            path: path.clone(),
            message: e.0,
        })?;
        Ok(Some(roots).filter(|r| !r.is_empty()))
    }

    pub fn save_svid(&self, svid: &AgentSvid) -> Result<(), StoreError> {
        #[cfg(test)]
        self.record_write();
        self.ensure_dir()?;
        // Key first: an SVID file without its key is useless, a key without its SVID is ignored.
        write_atomic(
            &self.dir.join(KEY_FILE),
            svid.key.to_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(
            &self.dir.join(SVID_FILE),
            svid::certs_to_pem(&svid.chain).as_bytes(),
            0o644,
        )
    }

    pub fn save_bundle(&self, roots: &[Vec<u8>]) -> Result<(), StoreError> {
        #[cfg(test)]
        self.record_write();
        self.ensure_dir()?;
        write_atomic(
            &self.dir.join(BUNDLE_FILE),
            svid::certs_to_pem(roots).as_bytes(),
            0o644,
        )
    }

    /// Forgets the agent's identity (after the server evicted or banned it), so the next start
    /// attests afresh instead of retrying a dead SVID forever.
    pub fn clear(&self) {
        for f in [SVID_FILE, KEY_FILE] {
            let _ = fs::remove_file(self.dir.join(f));
        }
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `data` to `path` atomically with `mode` (see [`sigil_fs::write_atomic`]).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    sigil_fs::write_atomic(path, data, mode).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_state_loads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DiskStore::new(dir.path()).load().unwrap().is_none());
    }
}
