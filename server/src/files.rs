//! Private files: the data dir holds argon2 hashes, license keys and the JWT secret, so it
//! is 0700 and its files 0600 whatever the umask (modes are set explicitly after
//! creation, not left to the umask).

use std::path::Path;

/// Mode of the data dir.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the database, its WAL and shared-memory files and the secret.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and parents) if needed and sets it to 0700.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Sets an existing file to 0600.
pub fn make_private_file(path: &Path) -> std::io::Result<()> {
    set_mode(path, FILE_MODE)
}

/// Creates `path` empty with 0600 if it does not exist (so a program that opens it later
/// never creates it with the umask's mode), then sets it to 0600.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    drop(opts.open(path)?);
    make_private_file(path)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// The permission bits of `path` when group or others may access it (`None` when private
/// or missing).
pub fn too_open(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Files of the data dir that must be private, with the dir itself first.
pub fn private_paths(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let db = crate::store::sqlite::DB_FILE;
    vec![
        data_dir.to_path_buf(),
        data_dir.join(db),
        data_dir.join(format!("{db}-wal")),
        data_dir.join(format!("{db}-shm")),
        data_dir.join(crate::auth::SECRET_FILE),
    ]
}

/// Human-readable warnings about data-dir entries group or others can access.
pub fn permission_warnings(data_dir: &Path) -> Vec<String> {
    private_paths(data_dir)
        .into_iter()
        .filter_map(|p| {
            too_open(&p).map(|mode| {
                let want = if p == data_dir { DIR_MODE } else { FILE_MODE };
                format!(
                    "{} has mode {mode:03o}; it should be {want:03o} (chmod {want:o} {})",
                    p.display(),
                    p.display()
                )
            })
        })
        .collect()
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_private_whatever_the_previous_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!permission_warnings(&dir).is_empty());
        make_private_dir(&dir).unwrap();
        let f = dir.join("keyfloat.db");
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let w = permission_warnings(&dir);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("666"), "{w:?}");
        create_private_file(&f).unwrap();
        assert!(permission_warnings(&dir).is_empty());
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
