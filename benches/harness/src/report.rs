//! Results as markdown: absolute numbers per subject, ratios of ours to each baseline, the
//! issue's targets with a verdict each, and the splice of a section into `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::probe::{Latencies, Throughput};
use crate::subjects::Subject;

/// Memory of one side of a subject.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sides {
    pub server: u64,
    pub client: u64,
}

/// Everything measured for one subject; `None` where a probe failed (see `errors`).
#[derive(Debug, Clone)]
pub struct Measured {
    pub subject: Subject,
    pub one_stream: Option<Throughput>,
    pub eight_streams: Option<Throughput>,
    /// CPU seconds of both tunnel processes per GB received, over both iperf3 runs.
    pub cpu_per_gb: Option<f64>,
    pub connect_1: Option<Latencies>,
    pub connect_8: Option<Latencies>,
    pub ping: Option<Latencies>,
    /// `redis-benchmark -c 16 -t get`: requests per second.
    pub redis_get: Option<f64>,
    /// `wrk -c 16` on nginx: requests per second.
    pub nginx: Option<f64>,
    pub rss_idle: Option<Sides>,
    /// The anonymous part of `rss_idle`.
    pub rss_idle_anon: Option<Sides>,
    pub rss_load: Option<Sides>,
    pub rss_streams: Option<Sides>,
    /// Connections held open for `rss_streams`.
    pub streams: usize,
    pub errors: Vec<String>,
}

impl Measured {
    pub fn new(subject: Subject) -> Self {
        Self {
            subject,
            one_stream: None,
            eight_streams: None,
            cpu_per_gb: None,
            connect_1: None,
            connect_8: None,
            ping: None,
            redis_get: None,
            nginx: None,
            rss_idle: None,
            rss_idle_anon: None,
            rss_load: None,
            rss_streams: None,
            streams: 0,
            errors: Vec::new(),
        }
    }

    /// Keeps a probe's value, or its error for the report.
    pub fn keep<T>(&mut self, what: &str, result: anyhow::Result<T>) -> Option<T> {
        result.map_err(|err| self.errors.push(format!("{what}: {err:#}"))).ok()
    }
}

/// The loopback section: how it was run, the tables, the targets, and any probe failures.
pub fn loopback_section(results: &[Measured], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    out += &absolute_tables(results);
    for ours in [Subject::TunnelTls, Subject::TunnelPlain] {
        if let Some(ours) = results.iter().find(|m| m.subject == ours) {
            out += &ratio_table(ours, results);
        }
    }
    out += &targets_table(results);
    for m in results.iter().filter(|m| !m.errors.is_empty()) {
        let _ = writeln!(out, "Probe failures for {}:\n", m.subject.label());
        for error in &m.errors {
            let _ = writeln!(out, "- {}", error.replace('\n', " "));
        }
        out.push('\n');
    }
    out
}

fn absolute_tables(results: &[Measured]) -> String {
    let mut out = String::from(
        "| subject | 1 stream | 8 streams | CPU s/GB (both sides) | conn/s, c=1 | conn/s, c=8 | connect+echo p50 / p99, c=1 | c=8 | ping-pong p50 / p99 |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for m in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.subject.label(),
            or_failed(m.one_stream.map(|t| gbits(t.bits_per_second))),
            or_failed(m.eight_streams.map(|t| gbits(t.bits_per_second))),
            match m.subject {
                Subject::Direct => "-".to_owned(),
                _ => or_failed(m.cpu_per_gb.map(|c| format!("{c:.2}"))),
            },
            or_failed(m.connect_1.as_ref().map(|l| format!("{:.0}", l.rate))),
            or_failed(m.connect_8.as_ref().map(|l| format!("{:.0}", l.rate))),
            or_failed(m.connect_1.as_ref().map(p50_p99)),
            or_failed(m.connect_8.as_ref().map(p50_p99)),
            or_failed(m.ping.as_ref().map(p50_p99)),
        );
    }
    out.push_str(
        "\n| subject | redis-benchmark GET, c=16 | wrk on nginx, c=16, keep-alive |\n|---|---|---|\n",
    );
    for m in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            m.subject.label(),
            or_failed(m.redis_get.map(|r| format!("{r:.0} req/s"))),
            or_failed(m.nginx.map(|r| format!("{r:.0} req/s"))),
        );
    }
    out.push_str(
        "\n| subject | RSS idle, server / client | of which anonymous | RSS peak under load | RSS with N idle connections (N) |\n\
         |---|---|---|---|---|\n",
    );
    for m in results.iter().filter(|m| m.subject != Subject::Direct) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            m.subject.label(),
            or_failed(m.rss_idle.map(sides)),
            or_failed(m.rss_idle_anon.map(sides)),
            or_failed(m.rss_load.map(sides)),
            or_failed(m.rss_streams.map(|s| format!("{} ({})", sides(s), m.streams))),
        );
    }
    out.push('\n');
    out
}

/// Ours against each baseline: above 1.0 is better for us in every row (CPU is inverted).
fn ratio_table(ours: &Measured, results: &[Measured]) -> String {
    let baselines: Vec<&Measured> = results.iter().filter(|m| m.subject != ours.subject).collect();
    let mut out = format!(
        "Ratios of {} to each baseline (above 1.0 favours {}):\n\n| metric |",
        ours.subject.label(),
        ours.subject.label()
    );
    for b in &baselines {
        let _ = write!(out, " vs {} |", b.subject.label());
    }
    out += "\n|---|";
    out += &"---|".repeat(baselines.len());
    out.push('\n');
    type Metric = fn(&Measured) -> Option<f64>;
    let rows: [(&str, Metric); 7] = [
        ("throughput, 1 stream", |m| m.one_stream.map(|t| t.bits_per_second)),
        ("throughput, 8 streams", |m| m.eight_streams.map(|t| t.bits_per_second)),
        ("connections/s, c=1", |m| m.connect_1.as_ref().map(|l| l.rate)),
        ("connections/s, c=8", |m| m.connect_8.as_ref().map(|l| l.rate)),
        ("redis-benchmark GET, c=16", |m| m.redis_get),
        ("wrk on nginx, c=16", |m| m.nginx),
        ("1 / (CPU s per GB)", |m| m.cpu_per_gb.filter(|c| *c > 0.0).map(|c| 1.0 / c)),
    ];
    for (name, metric) in rows {
        let _ = write!(out, "| {name} |");
        for b in &baselines {
            let cell = match (metric(ours), metric(b)) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
                _ => "-".to_owned(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The targets, each with the measured value and a verdict.
fn targets_table(results: &[Measured]) -> String {
    let get = |s: Subject| results.iter().find(|m| m.subject == s);
    let mut out = String::from("| target | measured | met |\n|---|---|---|\n");
    let mut row = |target: String, measured: Option<(String, bool)>| {
        let (value, met) = measured.unwrap_or(("not measured".to_owned(), false));
        let _ = writeln!(out, "| {target} | {value} | {} |", if met { "yes" } else { "**no**" });
    };
    let ratio = |ours: Subject, base: Subject, f: fn(&Measured) -> Option<f64>, at_least: f64| {
        let (x, y) = (f(get(ours)?)?, f(get(base)?)?);
        Some((format!("{:.2}x", x / y), x / y >= at_least))
    };
    let one: fn(&Measured) -> Option<f64> = |m| m.one_stream.map(|t| t.bits_per_second);
    let eight: fn(&Measured) -> Option<f64> = |m| m.eight_streams.map(|t| t.bits_per_second);
    let (tls, plain) = (Subject::TunnelTls, Subject::TunnelPlain);
    for (streams, f) in [("1 stream", one), ("8 streams", eight)] {
        row(format!("TLS throughput, {streams}, >= 1.0x bore"), ratio(tls, Subject::Bore, f, 1.0));
        row(
            format!("TLS throughput, {streams}, >= 1.7x rathole TLS"),
            ratio(tls, Subject::RatholeTls, f, 1.7),
        );
        row(format!("plaintext throughput, {streams}, >= 1.3x bore"), ratio(plain, Subject::Bore, f, 1.3));
    }
    row(
        "CPU s/GB with TLS <= rathole plain".to_owned(),
        (|| {
            let (x, y) = (get(tls)?.cpu_per_gb?, get(Subject::RatholePlain)?.cpu_per_gb?);
            Some((format!("{x:.2} vs {y:.2}"), x <= y))
        })(),
    );
    row(
        "connection rate, c=1, >= 2x rathole plain".to_owned(),
        ratio(tls, Subject::RatholePlain, |m| m.connect_1.as_ref().map(|l| l.rate), 2.0),
    );
    row(
        "redis-benchmark GET, c=16, TLS >= 1.0x bore".to_owned(),
        ratio(tls, Subject::Bore, |m| m.redis_get, 1.0),
    );
    row("wrk on nginx, c=16, TLS >= 1.0x bore".to_owned(), ratio(tls, Subject::Bore, |m| m.nginx, 1.0));
    row(
        "ping-pong p50 <= direct + 30 us".to_owned(),
        (|| {
            let (x, y) = (get(tls)?.ping.as_ref()?.p50, get(Subject::Direct)?.ping.as_ref()?.p50);
            let over = x.saturating_sub(y);
            Some((format!("+{} us", over.as_micros()), over <= Duration::from_micros(30)))
        })(),
    );
    row(
        "RSS idle <= 8 MiB per side".to_owned(),
        get(tls).and_then(|m| m.rss_idle).map(|s| (sides(s), s.server.max(s.client) <= 8 << 20)),
    );
    row(
        "RSS with 10,000 idle streams <= 64 MiB per side".to_owned(),
        get(tls).and_then(|m| {
            let s = m.rss_streams?;
            Some((
                format!("{} ({} streams)", sides(s), m.streams),
                m.streams >= 10_000 && s.server.max(s.client) <= 64 << 20,
            ))
        }),
    );
    out.push('\n');
    out
}

fn or_failed(cell: Option<String>) -> String {
    cell.unwrap_or_else(|| "failed".to_owned())
}

pub fn gbits(bits_per_second: f64) -> String {
    if bits_per_second >= 1e9 {
        format!("{:.2} Gbit/s", bits_per_second / 1e9)
    } else {
        format!("{:.0} Mbit/s", bits_per_second / 1e6)
    }
}

fn p50_p99(l: &Latencies) -> String {
    let failed = if l.failures > 0 { format!(" ({} failed)", l.failures) } else { String::new() };
    format!("{} / {} us{failed}", l.p50.as_micros(), l.p99.as_micros())
}

fn sides(s: Sides) -> String {
    format!("{} / {}", mib(s.server), mib(s.client))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `doc` with
/// `section`, or appends the marked section if the markers are missing.
pub fn splice_section(doc: &str, name: &str, section: &str) -> String {
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let marked = format!("{begin}\n{}\n{end}", section.trim_end());
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{marked}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n\n{marked}\n", doc.trim_end()),
    }
}

/// Prints `section` and, given a file, replaces that file's section `name` with it.
pub fn publish(section: &str, name: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!("{section}");
    if let Some(out) = out {
        let doc = std::fs::read_to_string(out).unwrap_or_default();
        std::fs::write(out, splice_section(&doc, name, section))
            .map_err(|err| anyhow::anyhow!("writing {}: {err}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
pub fn today() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    civil_date((secs / 86_400) as i64)
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// CPU model, core count and kernel, for the report header.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latencies(rate: f64, p50_us: u64) -> Latencies {
        Latencies {
            rate,
            p50: Duration::from_micros(p50_us),
            p99: Duration::from_micros(p50_us * 2),
            failures: 0,
        }
    }

    fn measured(subject: Subject, gbit: f64, cpu: f64, rate: f64, p50_us: u64, rss_mib: u64) -> Measured {
        let t = Some(Throughput { bits_per_second: gbit * 1e9, bytes: gbit * 1e9 });
        let rss = Some(Sides { server: rss_mib << 20, client: rss_mib << 20 });
        Measured {
            one_stream: t,
            eight_streams: t,
            cpu_per_gb: Some(cpu),
            connect_1: Some(latencies(rate, 100)),
            connect_8: Some(latencies(rate * 2.0, 200)),
            ping: Some(latencies(10_000.0, p50_us)),
            rss_idle: rss,
            rss_load: rss,
            rss_streams: rss,
            streams: 10_000,
            ..Measured::new(subject)
        }
    }

    #[test]
    fn targets_get_verdicts_from_ratios_in_the_same_run() {
        let results = vec![
            measured(Subject::Direct, 30.0, 0.0, 9000.0, 20, 0),
            measured(Subject::TunnelTls, 10.0, 0.5, 7000.0, 45, 6),
            measured(Subject::TunnelPlain, 12.0, 0.4, 7000.0, 45, 6),
            measured(Subject::RatholeTls, 4.0, 1.0, 600.0, 60, 10),
            measured(Subject::RatholePlain, 5.0, 0.6, 3000.0, 50, 10),
            measured(Subject::Bore, 7.0, 0.7, 2000.0, 50, 10),
        ];
        let text = loopback_section(&results, "header");
        assert!(text.contains("| TLS throughput, 1 stream, >= 1.0x bore | 1.43x | yes |"), "{text}");
        assert!(text.contains("| TLS throughput, 1 stream, >= 1.7x rathole TLS | 2.50x | yes |"), "{text}");
        assert!(text.contains("| connection rate, c=1, >= 2x rathole plain | 2.33x | yes |"), "{text}");
        assert!(text.contains("| ping-pong p50 <= direct + 30 us | +25 us | yes |"), "{text}");
        assert!(text.contains("| CPU s/GB with TLS <= rathole plain | 0.50 vs 0.60 | yes |"), "{text}");
        assert!(text.contains("| RSS idle <= 8 MiB per side | 6.0 MiB / 6.0 MiB | yes |"), "{text}");
    }

    #[test]
    fn a_missed_target_and_a_failed_probe_are_reported_as_such() {
        let mut slow = measured(Subject::TunnelTls, 3.0, 0.9, 1000.0, 80, 70);
        slow.ping = None;
        slow.errors.push("ping-pong: connection refused".to_owned());
        let results = vec![
            measured(Subject::Direct, 30.0, 0.0, 9000.0, 20, 0),
            slow,
            measured(Subject::Bore, 7.0, 0.7, 2000.0, 50, 10),
        ];
        let text = loopback_section(&results, "header");
        assert!(text.contains("| TLS throughput, 1 stream, >= 1.0x bore | 0.43x | **no** |"), "{text}");
        assert!(text.contains("| ping-pong p50 <= direct + 30 us | not measured | **no** |"), "{text}");
        assert!(text.contains("| RSS with 10,000 idle streams <= 64 MiB per side | 70.0 MiB / 70.0 MiB (10000 streams) | **no** |"), "{text}");
        assert!(text.contains("- ping-pong: connection refused"), "{text}");
    }

    #[test]
    fn sections_replace_their_marked_span_or_are_appended() {
        let doc = "intro\n<!-- x:begin -->\nold\n<!-- x:end -->\noutro\n";
        assert_eq!(
            splice_section(doc, "x", "new\n"),
            "intro\n<!-- x:begin -->\nnew\n<!-- x:end -->\noutro\n"
        );
        assert_eq!(splice_section("intro\n", "y", "new"), "intro\n\n<!-- y:begin -->\nnew\n<!-- y:end -->\n");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_779), "2026-11-22");
    }
}
