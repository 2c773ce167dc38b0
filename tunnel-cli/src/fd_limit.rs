//! The open-file limit.
//!
//! Each visitor costs the server two descriptors (the visitor's socket and, for server-side
//! targets, the dialled one) and the client one per target connection, so the usual soft limit
//! of 1024 caps a tunnel at a few hundred visitors while the hard limit, which the administrator
//! chose, often allows far more. Raising the soft limit to the hard one needs no privilege.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit before and after
/// (`None` meaning unlimited).
pub fn raise() -> std::io::Result<(Option<u64>, Option<u64>)> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok((limit.current, limit.current));
    }
    setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    Ok((limit.current, limit.maximum))
}
