//! What applying clients' route tables costs the server, held to limits across sessions.
//!
//! - A client name's table allowance ([`TableCosts::pace`]): a burst, then a steady rate. It is
//!   the name's, not a session's: reconnecting does not refill it, and replicas share it.
//! - Path expressions compiled off the session's thread ([`TableCosts::matcher`]), one at a
//!   time server-wide. A table of 64 expressions near the size limit takes the best part of
//!   100 ms to compile; on the single-threaded runtime that carries the session, it stalled
//!   every connection, visitor and edge request sharing that thread for as long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::http::Matcher;
use crate::proto::{HttpMatch, PathMatch};

/// Tables a client name may send in a burst, and how fast that allowance comes back: applying
/// one may close and open dozens of listeners and compile dozens of expressions.
const TABLE_BURST: f64 = 10.0;
const TABLES_PER_SECOND: f64 = 2.0;

/// Names whose allowances are kept before the full ones (those of names quiet for
/// `TABLE_BURST / TABLES_PER_SECOND`, the same as none) are let go.
const KEPT_NAMES: usize = 1024;

#[derive(Debug)]
pub(in crate::server) struct TableCosts {
    allowances: Mutex<Allowances>,
    /// One permit: at most one core compiles expressions, whoever sends them.
    compiling: Semaphore,
}

#[derive(Debug)]
struct Allowances {
    by_name: HashMap<String, Allowance>,
    /// The next time `by_name` reaches this size, full allowances are let go.
    prune_at: usize,
}

/// A token bucket: `tokens` as of `at`. Below zero, tables already waiting for their turn.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

impl Allowance {
    fn now(self, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * TABLES_PER_SECOND;
        (self.tokens + refilled).min(TABLE_BURST)
    }
}

impl Default for TableCosts {
    fn default() -> Self {
        let allowances = Allowances { by_name: HashMap::new(), prune_at: KEPT_NAMES };
        Self { allowances: Mutex::new(allowances), compiling: Semaphore::new(1) }
    }
}

impl TableCosts {
    /// Takes one table from `name`'s allowance, first waiting for its turn if it is spent (a
    /// client sending tables in a loop is slowed down, not served at the others' expense).
    pub(in crate::server) async fn pace(&self, name: &str) {
        let wait = self.reserve(name, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a table from `name`'s allowance at `now`; how long until its turn.
    fn reserve(&self, name: &str, now: Instant) -> Duration {
        let mut allowances = self.allowances.lock().unwrap_or_else(|e| e.into_inner());
        let Allowances { by_name, prune_at } = &mut *allowances;
        if by_name.len() >= *prune_at && !by_name.contains_key(name) {
            by_name.retain(|_, allowance| allowance.now(now) < TABLE_BURST);
            *prune_at = KEPT_NAMES.max(by_name.len().saturating_mul(2));
        }
        let allowance = by_name.entry(name.to_owned()).or_insert(Allowance { tokens: TABLE_BURST, at: now });
        let tokens = allowance.now(now) - 1.0;
        *allowance = Allowance { tokens, at: now };
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / TABLES_PER_SECOND)
        }
    }

    /// `spec` compiled ([`Matcher::new`]); a path expression on the blocking pool, after those
    /// of other sessions already waiting.
    pub(in crate::server) async fn matcher(&self, spec: HttpMatch) -> Result<Matcher, String> {
        self.matcher_with(spec, Matcher::new).await
    }

    async fn matcher_with(
        &self,
        spec: HttpMatch,
        compile: fn(HttpMatch) -> Result<Matcher, String>,
    ) -> Result<Matcher, String> {
        if !matches!(spec.path, PathMatch::Regex(_)) {
            return compile(spec);
        }
        let _turn = self.compiling.acquire().await.map_err(|_| "the server is stopping".to_owned())?;
        tokio::task::spawn_blocking(move || compile(spec))
            .await
            .unwrap_or_else(|e| Err(format!("compiling its path expression failed: {e}")))
    }

    #[cfg(test)]
    fn names_kept(&self) -> usize {
        self.allowances.lock().unwrap().by_name.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Mutex as StdMutex;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_names_allowance_outlives_its_sessions_and_is_its_own() {
        let costs = TableCosts::default();
        let now = Instant::now();
        for table in 0..10 {
            assert_eq!(costs.reserve("churn", now), Duration::ZERO, "table {table} of the burst");
        }
        // A new session of the name (a reconnect, or a replica) takes from the same allowance.
        assert_eq!(costs.reserve("churn", now), Duration::from_millis(500));
        assert_eq!(costs.reserve("churn", now), Duration::from_secs(1), "its turn comes after the last");
        assert_eq!(costs.reserve("quiet", now), Duration::ZERO, "another name has its own");
        // Back to a full burst once the name has waited out its debt and the refill.
        let later = now + Duration::from_secs(6);
        for table in 0..10 {
            assert_eq!(costs.reserve("churn", later), Duration::ZERO, "table {table} after the pause");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_allowances_are_let_go_once_many_names_are_kept() {
        let now = Instant::now();
        let many = || {
            let costs = TableCosts::default();
            for n in 0..KEPT_NAMES {
                costs.reserve(&format!("client-{n}"), now);
            }
            costs
        };
        let costs = many();
        costs.reserve("next", now);
        assert_eq!(costs.names_kept(), KEPT_NAMES + 1, "allowances not yet full are kept");
        let costs = many();
        costs.reserve("later", now + Duration::from_secs(1));
        assert_eq!(costs.names_kept(), 1, "full allowances, the same as none, are let go");
    }

    /// Waits for the test to say the session's thread ran meanwhile.
    static RAN_MEANWHILE: StdMutex<Option<mpsc::Receiver<()>>> = StdMutex::new(None);

    fn compile_waiting_for_the_session_thread(spec: HttpMatch) -> Result<Matcher, String> {
        let ran = RAN_MEANWHILE.lock().unwrap().take().expect("one expression");
        ran.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the session's thread was held while compiling".to_owned())?;
        Matcher::new(spec)
    }

    #[test]
    fn an_expression_is_compiled_while_the_sessions_thread_goes_on() {
        let (tell, ran) = mpsc::channel();
        *RAN_MEANWHILE.lock().unwrap() = Some(ran);
        // The session's thread: a runtime of one thread, as each shard is.
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let compiled = runtime.block_on(async {
            let costs = TableCosts::default();
            let spec = HttpMatch {
                path: PathMatch::Regex("/v[0-9]+/.*".into()),
                ..HttpMatch::host("a.test".parse().unwrap())
            };
            let other_work = async {
                tokio::task::yield_now().await;
                tell.send(()).unwrap();
            };
            let (compiled, ()) =
                tokio::join!(costs.matcher_with(spec, compile_waiting_for_the_session_thread), other_work);
            compiled
        });
        let matcher = compiled.unwrap();
        assert!(matcher.matches("/v2/users", "GET", &http::HeaderMap::new()));
    }
}
