//! The payout wallet: one ed25519 key, stored as an `S…` strkey in a 0600 file.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use stellar_xdr::{DecoratedSignature, Signature, SignatureHint};
use tracing::info;

/// Why a wallet could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// Reading or writing the key file failed.
    #[error("wallet file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold a valid `S…` secret seed.
    #[error("wallet file {path} does not hold a Stellar secret seed (S… strkey)")]
    BadSecret {
        /// The key file.
        path: PathBuf,
    },
    /// A secret given as text is not a valid `S…` strkey.
    #[error("not a Stellar secret seed (S… strkey)")]
    BadSecretText,
    /// The operating system's random number generator failed.
    #[error("no randomness for a new key: {0}")]
    Random(getrandom::Error),
    /// The key file can be read by other users, who could take the payout account.
    #[error(
        "wallet file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    ReadableByOthers {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

/// A Stellar account key that signs payments. Separate from the node's identity key.
pub struct Wallet {
    key: SigningKey,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wallet({})", self.address())
    }
}

impl Wallet {
    /// A wallet from a 32-byte ed25519 seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A new random wallet.
    pub fn generate() -> Result<Self, WalletError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(WalletError::Random)?;
        let w = Self::from_seed(seed);
        seed.fill(0);
        Ok(w)
    }

    /// A wallet from an `S…` secret strkey.
    pub fn from_secret(secret: &str) -> Result<Self, WalletError> {
        let k = stellar_strkey::ed25519::PrivateKey::from_string(secret.trim())
            .map_err(|_| WalletError::BadSecretText)?;
        Ok(Self::from_seed(k.0))
    }

    /// Loads the wallet at `path`, or creates a new one there (mode 0600, parent directories
    /// created) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, WalletError> {
        let io = |source| WalletError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                refuse_if_readable_by_others(path)?;
                let k = stellar_strkey::ed25519::PrivateKey::from_string(text.trim()).map_err(
                    |_| WalletError::BadSecret {
                        path: path.to_path_buf(),
                    },
                )?;
                Ok(Self::from_seed(k.0))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let w = Self::generate()?;
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                // Write a private temporary file and rename it, so a crash never leaves a
                // truncated key and the secret is never readable by others.
                let tmp = path.with_extension("tmp");
                let _ = std::fs::remove_file(&tmp);
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&tmp).map_err(io)?;
                f.write_all(w.secret_strkey().as_bytes()).map_err(io)?;
                f.write_all(b"\n").map_err(io)?;
                f.sync_all().map_err(io)?;
                drop(f);
                std::fs::rename(&tmp, path).map_err(io)?;
                info!(path = %path.display(), address = %w.address(), "created payout wallet");
                Ok(w)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The account address (`G…` strkey).
    pub fn address(&self) -> String {
        stellar_strkey::ed25519::PublicKey(self.public_key())
            .to_string()
            .as_str()
            .to_owned()
    }

    /// The raw ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The secret seed as an `S…` strkey. Handle with care.
    pub fn secret_strkey(&self) -> String {
        let k = stellar_strkey::ed25519::PrivateKey(self.key.to_bytes());
        k.as_unredacted().to_string().as_str().to_owned()
    }

    /// Signs a transaction hash: the signature with its hint (the public key's last 4 bytes).
    pub fn sign_hash(&self, hash: &[u8; 32]) -> DecoratedSignature {
        let pk = self.public_key();
        let mut hint = [0u8; 4];
        hint.copy_from_slice(&pk[28..]);
        let sig = self.key.sign(hash).to_bytes();
        DecoratedSignature {
            hint: SignatureHint(hint),
            // A 64-byte signature always fits the 64-byte bound.
            signature: Signature(sig.to_vec().try_into().unwrap_or_default()),
        }
    }
}

/// A key file readable by others is refused, like the node key: whoever reads it holds the
/// payout account.
fn refuse_if_readable_by_others(path: &Path) -> Result<(), WalletError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(WalletError::ReadableByOthers {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "SCCS5ZBI7WVIJ4SW36WGOQQIWJYCL3VOAULSXX3FB57USIO25EDOYQHH";
    const ADDRESS: &str = "GDF5O4OWEMVBY5FLDHWA5RZTYSV2U276XGKZZ6VSHDDR3THSQ6OQS7UM";

    #[test]
    fn secret_strkey_gives_published_address() {
        let w = Wallet::from_secret(SECRET).unwrap();
        assert_eq!(w.address(), ADDRESS);
        assert_eq!(w.secret_strkey(), SECRET);
        assert!(Wallet::from_secret("GDF5O4OWEMVBY5FLDHWA").is_err());
        assert!(!format!("{w:?}").contains(SECRET));
    }

    #[test]
    fn load_or_create_writes_a_private_file_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("payout.key");
        let a = Wallet::load_or_create(&path).unwrap();
        let b = Wallet::load_or_create(&path).unwrap();
        assert_eq!(a.address(), b.address());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with('S'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A key other users can read is refused, and loading it changes nothing.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Wallet::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, WalletError::ReadableByOthers { mode: 0o644, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            Wallet::load_or_create(&path).unwrap_err(),
            WalletError::BadSecret { .. }
        ));
    }

    #[test]
    fn signature_hint_is_last_four_key_bytes() {
        let w = Wallet::from_secret(SECRET).unwrap();
        let sig = w.sign_hash(&[1; 32]);
        assert_eq!(hex::encode(sig.hint.0), "f2879d09");
        assert_eq!(sig.signature.0.len(), 64);
    }
}
