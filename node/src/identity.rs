//! The node key: created on first run in the data dir with 0600 permissions, reused after.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crank_protocol::Identity;

/// File name of the node key inside the data dir.
pub const NODE_KEY_FILE: &str = "node.key";

/// Why the node key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("cannot access the node key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a key this node wrote.
    #[error("{path} is not a crank node key ({why}); move it away to create a new identity")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Others can read the secret key.
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Another user owns the secret file, so they can read or replace it.
    #[error(
        "{path} is owned by user {owner}, not by this user ({me}); run `chown $(id -u) {path}` if it is yours"
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// No randomness available.
    #[error("cannot get randomness for a new key: {0}")]
    Random(String),
}

const HEADER: &str = "crank-node ed25519 secret key v1\n";

/// Creates the data dir (and its parents) readable by its owner only (0700), so other local
/// users cannot list or read the ledger, the models or the keys. An existing dir is left as
/// the owner set it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `contents` to a new file with mode 0600, failing if it exists.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Refuses secret files that group or others can read, or that another user owns.
pub fn check_secret_permissions(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(|source| IdentityError::Io {
        path: path.into(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(IdentityError::Owner {
            path: path.into(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// Loads the node key from `data_dir`, creating it on first run. Returns whether it was new.
pub fn load_or_create(data_dir: &Path) -> Result<(Identity, bool), IdentityError> {
    let path = data_dir.join(NODE_KEY_FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            check_secret_permissions(&path)?;
            let hex_part = text
                .strip_prefix(HEADER)
                .ok_or_else(|| IdentityError::Corrupt {
                    path: path.clone(),
                    why: "missing header".into(),
                })?
                .trim();
            let bytes = hex::decode(hex_part).map_err(|e| IdentityError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?;
            let secret: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::Corrupt {
                path: path.clone(),
                why: "key is not 32 bytes".into(),
            })?;
            Ok((Identity::from_secret(secret), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
            let contents = format!("{HEADER}{}\n", hex::encode(secret));
            write_secret_file(&path, contents.as_bytes()).map_err(io)?;
            Ok((Identity::from_secret(secret), true))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a").join("data");
        create_private_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
        // Again: no error, nothing changed.
        create_private_dir(&dir).unwrap();
    }

    #[test]
    fn created_once_with_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, new_a) = load_or_create(dir.path()).unwrap();
        let (b, new_b) = load_or_create(dir.path()).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.node_id(), b.node_id());
        let mode = fs::metadata(dir.path().join(NODE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_world_readable_and_corrupt_keys() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Permissions { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
