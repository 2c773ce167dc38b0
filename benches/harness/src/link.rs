//! A long, thin, lossy link in user space: packets read from a TUN device in one network
//! namespace are delayed, rate-limited, randomly dropped and written to a TUN device in the
//! other, in both directions. (This kernel has no `netem` qdisc; TUN devices work anywhere.)

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Settings of one direction, shared so that a run can change the loss between measurements.
#[derive(Debug)]
pub struct LinkSettings {
    /// One-way delay.
    pub delay: Duration,
    /// Bits per second leaving the queue.
    pub rate_bps: u64,
    /// Longest a packet may wait in the queue before it is dropped (tail drop).
    pub queue: Duration,
    /// Drop probability in parts per million (atomic so it can change while running).
    pub loss_ppm: AtomicU64,
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Written to the far side at this instant.
    Deliver(Instant),
    /// Lost at random.
    Lost,
    /// The queue was full.
    Overflow,
}

/// The queue of one direction: a serialising bottleneck of `rate_bps` followed by `delay`.
#[derive(Debug)]
pub struct Shaper {
    /// When the bottleneck finishes sending what is queued.
    busy_until: Option<Instant>,
}

impl Shaper {
    pub fn new() -> Self {
        Self { busy_until: None }
    }

    /// Decides the fate of a `len`-byte packet arriving at `now`; `roll` is uniform in [0, 1).
    pub fn admit(&mut self, settings: &LinkSettings, now: Instant, len: usize, roll: f64) -> Fate {
        let start = self.busy_until.filter(|busy| *busy > now).unwrap_or(now);
        if start - now > settings.queue {
            return Fate::Overflow;
        }
        if roll * 1e6 < settings.loss_ppm.load(Ordering::Relaxed) as f64 {
            return Fate::Lost;
        }
        let serialisation = Duration::from_secs_f64(len as f64 * 8.0 / settings.rate_bps.max(1) as f64);
        let done = start + serialisation;
        self.busy_until = Some(done);
        Fate::Deliver(done + settings.delay)
    }
}

/// Counts of a direction, for the report.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Handed to the far device.
    pub delivered: AtomicU64,
    pub lost: AtomicU64,
    pub overflowed: AtomicU64,
}

/// A TUN device (IP packets, no extra header), open until dropped.
pub struct Tun {
    file: File,
}

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates TUN device `name` inside network namespace `netns` (as named by `ip netns`).
    /// Switches this thread's namespace and back, so call it before other threads depend on it.
    #[allow(unsafe_code)]
    pub fn create_in(netns: &str, name: &str) -> Result<Self> {
        if name.len() >= libc::IFNAMSIZ {
            bail!("device name '{name}' is too long");
        }
        let home =
            File::open("/proc/thread-self/ns/net").context("opening this thread's network namespace")?;
        let target = File::open(format!("/var/run/netns/{netns}"))
            .with_context(|| format!("opening network namespace '{netns}' (created with `ip netns add`?)"))?;
        // SAFETY: setns takes a namespace descriptor we own; it changes only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("entering network namespace '{netns}': {}", std::io::Error::last_os_error());
        }
        let created = Self::create(name);
        // SAFETY: as above, back to the namespace we started in.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("returning from network namespace '{netns}': {}", std::io::Error::last_os_error());
        }
        created
    }

    #[allow(unsafe_code)]
    fn create(name: &str) -> Result<Self> {
        let file =
            File::options().read(true).write(true).open("/dev/net/tun").context("opening /dev/net/tun")?;
        let mut request = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is laid out as.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut request) } != 0 {
            bail!("creating TUN device '{name}': {}", std::io::Error::last_os_error());
        }
        Ok(Self { file })
    }

    fn try_clone(&self) -> Result<File> {
        Ok(self.file.try_clone()?)
    }
}

/// Carries packets from `from` to `to` through a [`Shaper`] until `stop` is set (checked
/// whenever a packet arrives). Spawns a reader and a writer thread.
pub fn run_direction(
    from: &Tun,
    to: &Tun,
    settings: Arc<LinkSettings>,
    counters: Arc<LinkCounters>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut reader = from.try_clone()?;
    let mut writer = to.try_clone()?;
    let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let delivered = Arc::clone(&counters);
    std::thread::spawn(move || {
        let mut shaper = Shaper::new();
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = reader.read(&mut buf) else { return };
            match shaper.admit(&settings, Instant::now(), n, rand::random::<f64>()) {
                Fate::Deliver(at) => {
                    if queue.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Fate::Lost => {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                }
                Fate::Overflow => {
                    counters.overflowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    std::thread::spawn(move || {
        // Delivery times only grow (constant delay after a FIFO queue), so FIFO order is right.
        for (at, packet) in due {
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            // Counted before the write, so whoever reads the packet already sees it counted.
            delivered.delivered.fetch_add(1, Ordering::Relaxed);
            if writer.write_all(&packet).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// A raw descriptor as a `File` (for tests that use a pipe in place of a TUN device).
#[cfg(test)]
#[allow(unsafe_code)]
fn file_from_fd(fd: libc::c_int) -> File {
    // SAFETY: the caller passes a descriptor it owns and no longer uses.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(delay_ms: u64, rate_bps: u64, queue_ms: u64, loss_ppm: u64) -> LinkSettings {
        LinkSettings {
            delay: Duration::from_millis(delay_ms),
            rate_bps,
            queue: Duration::from_millis(queue_ms),
            loss_ppm: AtomicU64::new(loss_ppm),
        }
    }

    #[test]
    fn packets_are_serialised_at_the_rate_then_delayed() {
        // 1500 bytes at 12 Mbit/s take 1 ms on the wire.
        let link = settings(50, 12_000_000, 100, 0);
        let mut shaper = Shaper::new();
        let t0 = Instant::now();
        let first = shaper.admit(&link, t0, 1500, 0.5);
        let second = shaper.admit(&link, t0, 1500, 0.5);
        assert_eq!(first, Fate::Deliver(t0 + Duration::from_millis(51)));
        assert_eq!(second, Fate::Deliver(t0 + Duration::from_millis(52)));
        // After an idle gap the queue is empty again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(shaper.admit(&link, later, 1500, 0.5), Fate::Deliver(later + Duration::from_millis(51)));
    }

    #[test]
    fn a_full_queue_drops_and_loss_follows_the_roll() {
        let link = settings(0, 12_000_000, 5, 1_000);
        let mut shaper = Shaper::new();
        let t0 = Instant::now();
        let fates: Vec<Fate> = (0..10).map(|_| shaper.admit(&link, t0, 1500, 0.5)).collect();
        // 6 packets fit (queued 0..5 ms), the rest overflow.
        assert_eq!(fates.iter().filter(|f| matches!(f, Fate::Deliver(_))).count(), 6);
        assert_eq!(fates.iter().filter(|f| **f == Fate::Overflow).count(), 4);
        let mut fresh = Shaper::new();
        assert_eq!(fresh.admit(&link, t0, 1500, 0.000_5), Fate::Lost, "roll below 0.1% is lost");
        assert!(matches!(fresh.admit(&link, t0, 1500, 0.002), Fate::Deliver(_)));
    }

    #[test]
    fn a_direction_carries_packets_in_order_after_the_delay() {
        let mut a = [0; 2];
        let mut b = [0; 2];
        // SAFETY: pipe fills two descriptors into each array.
        #[allow(unsafe_code)]
        unsafe {
            assert_eq!(libc::pipe(a.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(b.as_mut_ptr()), 0);
        }
        let from = Tun { file: file_from_fd(a[0]) };
        let mut input = file_from_fd(a[1]);
        let to = Tun { file: file_from_fd(b[1]) };
        let mut output = file_from_fd(b[0]);
        let link = Arc::new(settings(20, 1_000_000_000, 100, 0));
        let counters = Arc::new(LinkCounters::default());
        run_direction(&from, &to, link, counters.clone(), Arc::new(AtomicBool::new(false))).unwrap();
        let sent = Instant::now();
        // Pipes merge writes, unlike TUN devices; one "packet" each round keeps them apart.
        for round in 0u8..3 {
            input.write_all(&[round; 100]).unwrap();
            let mut got = [0u8; 100];
            output.read_exact(&mut got).unwrap();
            assert_eq!(got, [round; 100]);
        }
        assert!(sent.elapsed() >= Duration::from_millis(60), "each packet waits out the delay");
        assert_eq!(counters.delivered.load(Ordering::Relaxed), 3);
    }
}
