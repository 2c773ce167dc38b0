//! Small filesystem helpers for secrets kept in the state directory.

use std::io::Write;
use std::path::Path;

/// Writes a file readable by its owner only (mode 0600 on Unix), replacing any old content.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
