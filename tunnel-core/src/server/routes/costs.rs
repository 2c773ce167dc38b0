//! What applying clients' route tables costs the server, held to limits across sessions.
//!
//! - A client's table allowance ([`TableCosts::take`]): a burst, then a steady rate. It is the
//!   client's (its name and kind of credential), not a session's: reconnecting does not refill
//!   it, and replicas share it. A table costs more the more path expressions it brings to
//!   compile, and a client's debt is bounded, so no wait is longer than [`LONGEST_WAIT`].
//! - Path expressions compiled off the session's thread ([`TableCosts::matcher`]), one at a
//!   time server-wide. A table of 64 expressions near the size limit takes the best part of
//!   100 ms to compile; on the single-threaded runtime that carries the session, it stalled
//!   every connection, visitor and edge request sharing that thread for as long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::auth::CredentialKind;
use crate::http::Matcher;
use crate::proto::{HttpMatch, PathMatch, RouteEntry, RouteKind};

/// Tables a client may send in a burst, and how fast that allowance comes back: applying one
/// may close and open dozens of listeners and compile dozens of expressions.
const TABLE_BURST: f64 = 10.0;
const TABLES_PER_SECOND: f64 = 2.0;

/// New path expressions that cost as much as one table more (64, a client's most, cost 8).
const EXPRESSIONS_PER_TABLE: f64 = 8.0;

/// The most a client may owe: tables past it still wait, but owe no more, so a client that
/// keeps reconnecting and sending (or its next holder) is never made to wait longer than
/// [`LONGEST_WAIT`].
const MOST_OWED: f64 = TABLE_BURST;

/// The longest a table waits for its turn: the most owed, plus the dearest table's own cost.
const LONGEST_WAIT: Duration = Duration::from_secs(((MOST_OWED + TABLE_BURST) / TABLES_PER_SECOND) as u64);

/// Clients whose allowances are kept before those full again are let go (a full allowance is
/// the same as none).
const KEPT_CLIENTS: usize = 1024;

/// Whose allowance a table is taken from.
pub(in crate::server) type Payer<'a> = (CredentialKind, &'a str);

#[derive(Debug)]
pub(in crate::server) struct TableCosts {
    allowances: Mutex<Allowances>,
    /// One permit: at most one core compiles expressions, whoever sends them.
    compiling: Arc<Semaphore>,
}

#[derive(Debug)]
struct Allowances {
    by_client: HashMap<(CredentialKind, String), Allowance>,
    /// The next time `by_client` reaches this size, full allowances are let go.
    prune_at: usize,
}

/// A token bucket: `tokens` as of `at`. Below zero, what tables already waiting owe.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

impl Allowance {
    fn tokens_at(self, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * TABLES_PER_SECOND;
        (self.tokens + refilled).min(TABLE_BURST)
    }
}

impl Default for TableCosts {
    fn default() -> Self {
        let allowances = Allowances { by_client: HashMap::new(), prune_at: KEPT_CLIENTS };
        Self { allowances: Mutex::new(allowances), compiling: Arc::new(Semaphore::new(1)) }
    }
}

/// What a table costs, given the entries of it that are new or changed: one, and more for the
/// path expressions among them (never more than a whole burst).
pub(in crate::server) fn table_cost<'a>(new: impl Iterator<Item = &'a RouteEntry>) -> f64 {
    let expressions = new
        .filter(|entry| {
            matches!(&entry.kind, RouteKind::Http { matcher } if matches!(matcher.path, PathMatch::Regex(_)))
        })
        .count();
    (1.0 + expressions as f64 / EXPRESSIONS_PER_TABLE).min(TABLE_BURST)
}

/// A table's place in its client's allowance: how long until its turn, and what it was charged
/// (less than its cost when the client already owed the most it may).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(in crate::server) struct Turn {
    pub(in crate::server) wait: Duration,
    pub(in crate::server) charged: f64,
}

impl TableCosts {
    /// Takes a table costing `cost` from `payer`'s allowance: its turn comes after `wait` (a
    /// client sending tables in a loop is slowed down, not served at the others' expense). A
    /// table given up before its turn is [`TableCosts::refund`]ed.
    pub(in crate::server) fn take(&self, payer: Payer<'_>, cost: f64) -> Turn {
        self.take_at(payer, cost, Instant::now())
    }

    /// Gives back what a table given up before its turn was charged.
    pub(in crate::server) fn refund(&self, (kind, name): Payer<'_>, turn: Turn) {
        let now = Instant::now();
        let mut allowances = self.allowances.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(allowance) = allowances.by_client.get_mut(&(kind, name.to_owned())) {
            let tokens = (allowance.tokens_at(now) + turn.charged).min(TABLE_BURST);
            *allowance = Allowance { tokens, at: now };
        }
    }

    fn take_at(&self, (kind, name): Payer<'_>, cost: f64, now: Instant) -> Turn {
        let mut allowances = self.allowances.lock().unwrap_or_else(|e| e.into_inner());
        let Allowances { by_client, prune_at } = &mut *allowances;
        let key = (kind, name.to_owned());
        if by_client.len() >= *prune_at && !by_client.contains_key(&key) {
            by_client.retain(|_, allowance| allowance.tokens_at(now) < TABLE_BURST);
            *prune_at = KEPT_CLIENTS.max(by_client.len().saturating_mul(2));
        }
        let allowance = by_client.entry(key).or_insert(Allowance { tokens: TABLE_BURST, at: now });
        let before = allowance.tokens_at(now);
        let left = before - cost;
        let kept = left.max(-MOST_OWED);
        *allowance = Allowance { tokens: kept, at: now };
        let wait = match left >= 0.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64(-left / TABLES_PER_SECOND).min(LONGEST_WAIT),
        };
        Turn { wait, charged: (before - kept).max(0.0) }
    }

    /// `spec` compiled ([`Matcher::new`]); a path expression on the blocking pool, after those
    /// of other sessions already waiting.
    pub(in crate::server) async fn matcher(&self, spec: HttpMatch) -> Result<Matcher, String> {
        self.matcher_with(spec, Matcher::new).await
    }

    async fn matcher_with<F>(&self, spec: HttpMatch, compile: F) -> Result<Matcher, String>
    where
        F: FnOnce(HttpMatch) -> Result<Matcher, String> + Send + 'static,
    {
        if !matches!(spec.path, PathMatch::Regex(_)) {
            return compile(spec);
        }
        // The permit goes with the work: a session that stops waiting leaves the compile
        // holding it, so a second one cannot start beside it.
        let turn = self.compiling.clone().acquire_owned().await.map_err(|_| COMPILE_FAILED.to_owned())?;
        let compiled = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            compile(spec)
        });
        compiled.await.unwrap_or_else(|_| Err(COMPILE_FAILED.to_owned()))
    }

    #[cfg(test)]
    fn clients_kept(&self) -> usize {
        self.allowances.lock().unwrap().by_client.len()
    }
}

/// The refusal of a route whose expression could not be compiled for a reason of the
/// server's own (its compiling stopped), told without the server's details.
const COMPILE_FAILED: &str = "its path expression could not be compiled on this server";

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    const CHURN: Payer<'static> = (CredentialKind::Shared, "churn");

    #[tokio::test(start_paused = true)]
    async fn a_clients_allowance_outlives_its_sessions_and_is_its_own() {
        let costs = TableCosts::default();
        let now = Instant::now();
        for table in 0..10 {
            assert_eq!(costs.take_at(CHURN, 1.0, now).wait, Duration::ZERO, "table {table} of the burst");
        }
        // A new session of the client (a reconnect, or a replica) takes from the same allowance.
        assert_eq!(costs.take_at(CHURN, 1.0, now).wait, Duration::from_millis(500));
        let given_up = costs.take_at(CHURN, 1.0, now);
        assert_eq!(given_up.wait, Duration::from_secs(1), "its turn comes after the last");
        costs.refund(CHURN, given_up);
        assert_eq!(
            costs.take_at(CHURN, 1.0, now).wait,
            Duration::from_secs(1),
            "a table given up costs nothing"
        );
        assert_eq!(costs.take_at((CredentialKind::Shared, "quiet"), 1.0, now).wait, Duration::ZERO);
        let own_token = (CredentialKind::PerClient, "churn");
        assert_eq!(
            costs.take_at(own_token, 1.0, now).wait,
            Duration::ZERO,
            "the name under another credential"
        );
        // Back to a full burst once the client has waited out its debt and the refill.
        let later = now + Duration::from_secs(6);
        for table in 0..10 {
            assert_eq!(
                costs.take_at(CHURN, 1.0, later).wait,
                Duration::ZERO,
                "table {table} after the pause"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expressions_cost_more_and_no_client_owes_past_a_bound() {
        let costs = TableCosts::default();
        let now = Instant::now();
        let table = |expressions: usize| {
            let entry = |n: usize| RouteEntry {
                id: crate::proto::RouteId(n as u64),
                kind: RouteKind::Http {
                    matcher: HttpMatch {
                        path: PathMatch::Regex(format!("/v{n}/.*")),
                        ..HttpMatch::host("a.test".parse().unwrap())
                    },
                },
            };
            (0..expressions).map(entry).collect::<Vec<_>>()
        };
        assert_eq!(table_cost(table(0).iter()), 1.0);
        assert_eq!(table_cost(table(64).iter()), 9.0, "a client's most expressions");
        assert_eq!(table_cost(table(1024).iter()), TABLE_BURST, "never more than a burst");
        assert_eq!(costs.take_at(CHURN, 9.0, now).wait, Duration::ZERO);
        assert_eq!(costs.take_at(CHURN, 9.0, now).wait, Duration::from_secs(4), "8 owed, at 2 a second");
        // Sessions that keep coming (each replacing the last) wait no longer than the bound.
        for _ in 0..100 {
            let turn = costs.take_at(CHURN, 9.0, now);
            assert!(turn.wait <= LONGEST_WAIT, "{turn:?}");
        }
        // At the bound a table is charged nothing, so giving it up gives nothing back.
        let at_the_bound = costs.take_at(CHURN, 9.0, now);
        assert_eq!(at_the_bound.charged, 0.0);
        costs.refund(CHURN, at_the_bound);
        assert_eq!(costs.take_at(CHURN, 1.0, now).wait, Duration::from_secs_f64(5.5), "10 owed and its own");
    }

    #[tokio::test(start_paused = true)]
    async fn full_allowances_are_let_go_once_many_clients_are_kept() {
        let now = Instant::now();
        let many = || {
            let costs = TableCosts::default();
            for n in 0..KEPT_CLIENTS {
                costs.take_at((CredentialKind::Shared, &format!("client-{n}")), 1.0, now);
            }
            costs
        };
        let costs = many();
        costs.take_at((CredentialKind::Shared, "next"), 1.0, now);
        assert_eq!(costs.clients_kept(), KEPT_CLIENTS + 1, "allowances not yet full are kept");
        let costs = many();
        costs.take_at((CredentialKind::Shared, "later"), 1.0, now + Duration::from_secs(1));
        assert_eq!(costs.clients_kept(), 1, "full allowances, the same as none, are let go");
    }

    #[test]
    fn an_expression_is_compiled_while_the_sessions_thread_goes_on() {
        let (tell, ran) = mpsc::channel();
        // Waits for word that the session's thread ran meanwhile.
        let compile = move |spec| {
            ran.recv_timeout(Duration::from_secs(10))
                .map_err(|_| "the session's thread was held while compiling".to_owned())?;
            Matcher::new(spec)
        };
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
                let _ = tell.send(());
            };
            tokio::join!(costs.matcher_with(spec, compile), other_work).0
        });
        let matcher = compiled.unwrap();
        assert!(matcher.matches("/v2/users", "GET", &http::HeaderMap::new()));
    }
}
