//! Small filesystem helpers for secrets kept in the state directory.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Creates a directory (and missing parents) that only its owner may enter (mode 0700 on
/// Unix). An existing directory keeps its mode: it may be shared on purpose (systemd's
/// `StateDirectory=` sets its own).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Opens a secret file of the state directory for reading, refusing one that someone else
/// could have written, or pointed us to: whoever can write the token or the key file holds the
/// token or the key.
///
/// The file must be owned by root or by this process's user, and writable by no one else: by
/// no other user, and by its group only when the group is one of this process's (a volume
/// kubelet hands to a pod's `fsGroup` is group-writable). A symlink is followed only when the
/// link itself is root's or ours (a mounted Kubernetes Secret's links are root's); a path that
/// is not a symlink is opened without following one, and the checks are made on the open file,
/// so a swap between check and read changes nothing.
pub(crate) fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let refuse = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{why}: whoever can write it holds what it keeps; make it this user's, mode 0600"),
            )
        };
        let ours = |uid: u32| uid == 0 || uid == rustix::process::geteuid().as_raw();
        let link = std::fs::symlink_metadata(path)?;
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        if link.file_type().is_symlink() {
            if !ours(link.uid()) {
                return Err(refuse(format!("a symlink owned by another user (uid {})", link.uid())));
            }
        } else {
            options.custom_flags(libc::O_NOFOLLOW);
        }
        let file = options.open(path)?;
        let meta = file.metadata()?;
        let mode = meta.mode() & 0o777;
        let our_group = |gid: u32| {
            gid == rustix::process::getegid().as_raw()
                || rustix::process::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
        };
        if mode & 0o002 != 0 || (mode & 0o020 != 0 && !our_group(meta.gid())) {
            return Err(refuse(format!("writable by others than its owner (mode {mode:03o})")));
        }
        if !ours(meta.uid()) {
            return Err(refuse(format!("owned by another user (uid {})", meta.uid())));
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    std::fs::File::open(path)
}

/// A secret file's bytes, read from the file [`open_private`] checked.
pub(crate) fn read_private(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    open_private(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_private`], as text.
pub(crate) fn read_private_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_private(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes a file readable by its owner only (mode 0600 on Unix), replacing any old one.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_replacing(path, contents, 0o600)
}

/// Writes a file with `mode` (on Unix), replacing any old one.
///
/// The content goes to a new file beside it, created exclusively (so a symlink planted at
/// either name is never followed, and the mode is the one asked for, whatever an old file had),
/// then renamed over `path`: a crash leaves the old file or the new one, never half of it.
pub(crate) fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let temp = temp_path(path)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // Makes the rename itself durable; best effort, as not every platform can sync a directory.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// `.NAME.RANDOM.tmp` in the same directory, so the rename never crosses file systems.
fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} names no file", path.display()))
    })?;
    let suffix: u64 = rand::random();
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".{suffix:016x}.tmp"));
    Ok(path.with_file_name(temp))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_secret_others_could_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_private(&path, b"secret").unwrap();
        assert_eq!(read_private(&path).unwrap(), b"secret");
        for mode in [0o666, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_private(&path).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
            let expected = format!("writable by others than its owner (mode {mode:03o})");
            assert!(err.to_string().starts_with(&expected), "{err}");
        }
        // Readable by others is not a planted file (a mounted Secret is 0644), nor writable by
        // the process's own group (a volume of a pod's fsGroup).
        for mode in [0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_private(&path).unwrap(), b"secret", "{mode:o}");
        }
        // A group this process is not in, another user's file, a symlink another user
        // planted (only root can make them here): a root-owned, world-readable target would
        // otherwise pass.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, None, Some(4321)).unwrap();
            let err = read_private(&path).unwrap_err();
            assert!(err.to_string().starts_with("writable by others than its owner (mode 660)"), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(4321), None).unwrap();
            let err = read_private(&path).unwrap_err();
            assert!(err.to_string().starts_with("owned by another user (uid 4321)"), "{err}");
            let link = dir.path().join("admin-token");
            std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
            assert!(read_private(&link).is_ok(), "a symlink of root's is followed");
            std::os::unix::fs::lchown(&link, Some(4321), None).unwrap();
            let err = read_private(&link).unwrap_err();
            assert!(err.to_string().starts_with("a symlink owned by another user (uid 4321)"), "{err}");
        }
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, victim) = (dir.path().join("token"), dir.path().join("victim"));
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_private(&path, b"secret").unwrap();
        assert!(!victim.exists(), "the write followed the symlink");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn an_old_readable_file_is_replaced_by_a_private_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["key.pem"], "a temporary file was left behind");
    }

    #[test]
    fn a_new_directory_is_private_and_an_existing_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        create_private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o750);
    }
}
