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
/// could have written or put there: whoever can write the token or the key file, or plant
/// another in its place, holds the token or the key.
///
/// The file must be a regular file with one name (a hard link to a file of root's, such as
/// `/etc/machine-id`, would pass the other checks), owned by root or by this process's user,
/// and writable by no other user: not by anyone, and by its group only when that group is one
/// of this process's (a volume kubelet hands to a pod's `fsGroup` is group-writable; the
/// members of that group are then trusted). A symlink is followed only when the link itself is
/// root's or ours (a mounted Kubernetes Secret's links are root's) and is still the same link,
/// leading to the same file, once that file is open. Any other path is opened without
/// following a symlink, and without blocking (a FIFO is refused, not waited on); the checks
/// are made on the open file, so a swap between check and read changes nothing.
pub(crate) fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let refuse = |why: String| {
            let why = format!("{why}: refused, as whoever could write it would hold its secret; it must be this user's or root's, mode 0600");
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)
        };
        let ours = |uid: u32| uid == 0 || uid == rustix::process::geteuid().as_raw();
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
        let link = std::fs::symlink_metadata(path)?;
        let symlink = link.file_type().is_symlink();
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        if symlink {
            if !ours(link.uid()) {
                return Err(refuse(format!("a symlink another user made (uid {})", link.uid())));
            }
            if link.nlink() != 1 {
                return Err(refuse(format!("a symlink with {} names (a hard link)", link.nlink())));
            }
            options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        } else {
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
        }
        let file = options.open(path)?;
        let meta = file.metadata()?;
        if symlink {
            // The link approved is the one followed: not swapped for another meanwhile.
            let still = std::fs::symlink_metadata(path)?;
            let target = std::fs::metadata(path)?;
            if !same(&still, &link) || !same(&target, &meta) {
                return Err(refuse("replaced while being opened".to_owned()));
            }
        }
        if !meta.is_file() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let mode = meta.mode() & 0o777;
        let our_group = |gid: u32| {
            gid == rustix::process::getegid().as_raw()
                || rustix::process::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
        };
        if mode & 0o002 != 0 {
            return Err(refuse(format!("writable by anyone (mode {mode:03o})")));
        }
        if mode & 0o020 != 0 && !our_group(meta.gid()) {
            return Err(refuse(format!(
                "writable by group {}, which this process is not in (mode {mode:03o})",
                meta.gid()
            )));
        }
        if !ours(meta.uid()) {
            return Err(refuse(format!("owned by another user (uid {})", meta.uid())));
        }
        if meta.nlink() != 1 {
            return Err(refuse(format!("a file with {} names (a hard link)", meta.nlink())));
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    std::fs::File::open(path)
}

/// Largest state-directory file [`read_private`] reads: far above any real one (a key, an
/// ACME account, a credential store of thousands of clients), and a bound on what a file
/// grown by mistake or by whoever owns the directory can make a start or a reload hold.
pub(crate) const PRIVATE_FILE_MAX: u64 = 16 * 1024 * 1024;

/// A secret file's bytes, at most [`PRIVATE_FILE_MAX`], read from the file [`open_private`]
/// checked.
pub(crate) fn read_private(path: &Path) -> std::io::Result<Vec<u8>> {
    read_private_within(path, PRIVATE_FILE_MAX)
}

/// [`read_private`], as text.
pub(crate) fn read_private_text(path: &Path) -> std::io::Result<String> {
    read_private_text_within(path, PRIVATE_FILE_MAX)
}

/// [`read_private_text`] of a file of at most `max_bytes`.
pub(crate) fn read_private_text_within(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    String::from_utf8(read_private_within(path, max_bytes)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A secret file's bytes, at most `max_bytes`; a longer file is refused
/// ([`std::io::ErrorKind::InvalidData`]) after reading no more than one byte past the bound.
fn read_private_within(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    open_private(path)?.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        let why = format!("longer than {max_bytes} bytes");
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    Ok(bytes)
}

/// A regular file's text, at most `max_bytes` (see [`read_regular`]).
pub(crate) fn read_regular_text(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    String::from_utf8(read_regular(path, max_bytes)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A regular file's bytes, at most `max_bytes`. Anything else is refused
/// ([`std::io::ErrorKind::InvalidInput`]): a FIFO (`--config <(...)` too), which would block
/// the reader until someone writes to it, or a device (`/dev/zero` would fill the memory).
/// Opened without blocking, and checked once open.
pub(crate) fn read_regular(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    // Nor, were it a terminal, made this process's controlling terminal.
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(invalid("not a regular file".to_owned()));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max_bytes {
        return Err(invalid(format!("larger than {}", shown_size(max_bytes))));
    }
    Ok(bytes)
}

/// `4 MiB`, `64 KiB`, or `100 bytes`.
fn shown_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1024 * 1024 && b % (1024 * 1024) == 0 => format!("{} MiB", b / 1024 / 1024),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
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
        let refused = |path: &Path, why: &str| {
            let err = read_private(path).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
            assert!(err.to_string().starts_with(why), "{err}");
        };
        for mode in [0o666, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            refused(&path, &format!("writable by anyone (mode {mode:03o})"));
        }
        // Readable by others is not a planted file (a mounted Secret is 0644), nor writable by
        // the process's own group (a volume of a pod's fsGroup).
        for mode in [0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_private(&path).unwrap(), b"secret", "{mode:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A second name: a hard link (to a root-owned file, it would pass everything else).
        let other_name = dir.path().join("linked");
        std::fs::hard_link(&path, &other_name).unwrap();
        refused(&path, "a file with 2 names (a hard link)");
        std::fs::remove_file(&other_name).unwrap();
        // A FIFO is refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = read_private(&fifo).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        // A group this process is not in, another user's file, a symlink another user made
        // (only root can make them here): a root-owned, world-readable target would otherwise
        // pass.
        if rustix::process::geteuid().is_root() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
            std::os::unix::fs::chown(&path, None, Some(4321)).unwrap();
            refused(&path, "writable by group 4321, which this process is not in (mode 660)");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(4321), None).unwrap();
            refused(&path, "owned by another user (uid 4321)");
            let link = dir.path().join("admin-token");
            std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
            assert!(read_private(&link).is_ok(), "a symlink of root's is followed");
            std::os::unix::fs::lchown(&link, Some(4321), None).unwrap();
            refused(&link, "a symlink another user made (uid 4321)");
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
    fn a_file_past_its_bound_is_refused_and_one_at_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.toml");
        write_private(&path, &[b'#'; 100]).unwrap();
        assert_eq!(read_private_text_within(&path, 100).unwrap().len(), 100);
        let err = read_private_text_within(&path, 99).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "longer than 99 bytes");
        // Every secret file has a bound (before, the key, the ACME account and the credential
        // store were read whole): a sparse file, so no disk is used.
        let large = dir.path().join("key.pem");
        write_private(&large, b"x").unwrap();
        let grow = |len| std::fs::OpenOptions::new().write(true).open(&large).unwrap().set_len(len).unwrap();
        grow(PRIVATE_FILE_MAX);
        assert_eq!(read_private(&large).unwrap().len() as u64, PRIVATE_FILE_MAX, "the bound itself is read");
        grow(PRIVATE_FILE_MAX + 1);
        for err in [read_private(&large).unwrap_err(), read_private_text(&large).unwrap_err()] {
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
            assert_eq!(err.to_string(), format!("longer than {PRIVATE_FILE_MAX} bytes"));
        }
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
