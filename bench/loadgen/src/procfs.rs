//! /proc sampling: CPU time and RSS of the server under test, of this
//! process, and of the whole machine (to spot interference).

use std::time::Instant;

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads, live and exited), in seconds.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ")": field 3 is index 0, so utime (14) is 11 and stime (15) is 12
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

fn status_kb(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn proc_rss_kb(pid: u32) -> Option<u64> {
    status_kb(&pid.to_string(), "VmRSS:")
}

pub fn self_rss_kb() -> Option<u64> {
    status_kb("self", "VmRSS:")
}

/// This process's user+system CPU seconds (getrusage, µs resolution).
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Busy CPU seconds of the whole machine (all CPUs) from /proc/stat.
pub fn machine_busy_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy =
        v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0.0);
    Some(busy / clk_tck())
}

/// A snapshot at the start or end of a measured phase.
#[derive(Clone, Copy)]
pub struct Snap {
    pub at: Instant,
    pub server_cpu: Option<f64>,
    pub server_rss: Option<u64>,
    pub self_cpu: f64,
    pub machine: Option<f64>,
}

impl Snap {
    pub fn take(server: Option<u32>) -> Snap {
        Snap {
            at: Instant::now(),
            server_cpu: server.and_then(proc_cpu_s),
            server_rss: server.and_then(proc_rss_kb),
            self_cpu: self_cpu_s(),
            machine: machine_busy_s(),
        }
    }
}

/// CPU figures between two snapshots, as JSON; `ops` divides server CPU.
pub fn cpu_json(a: &Snap, b: &Snap, ops: u64) -> serde_json::Value {
    cpu_json_multi(&[(*a, *b)], ops)
}

/// The same over several measured intervals (summed; RSS from the first
/// start and the last end).
pub fn cpu_json_multi(spans: &[(Snap, Snap)], ops: u64) -> serde_json::Value {
    let sum = |f: &dyn Fn(&Snap, &Snap) -> Option<f64>| -> Option<f64> {
        spans.iter().map(|(a, b)| f(a, b)).sum::<Option<f64>>()
    };
    let wall = sum(&|a, b| Some((b.at - a.at).as_secs_f64())).unwrap_or(0.0);
    let server = sum(&|a, b| Some(b.server_cpu? - a.server_cpu?));
    let me = sum(&|a, b| Some(b.self_cpu - a.self_cpu)).unwrap_or(0.0);
    let machine = sum(&|a, b| Some(b.machine? - a.machine?));
    let other = match (machine, server) {
        (Some(m), Some(s)) => Some((m - s - me).max(0.0)),
        (Some(m), None) => Some((m - me).max(0.0)),
        _ => None,
    };
    let first = spans.first().map(|s| s.0.server_rss).unwrap_or(None);
    let last = spans.last().map(|s| s.1.server_rss).unwrap_or(None);
    serde_json::json!({
        "wall_s": wall,
        "server_cpu_s": server,
        "server_cpu_pct": server.map(|s| 100.0 * s / wall),
        "server_cpu_us_per_op": server.and_then(|s| if ops > 0 { Some(s * 1e6 / ops as f64) } else { None }),
        "server_rss_kb_start": first,
        "server_rss_kb_end": last,
        "loadgen_cpu_s": me,
        "loadgen_cpu_pct": 100.0 * me / wall,
        "other_cpu_s": other,
        "other_cpu_pct": other.map(|o| 100.0 * o / wall),
    })
}
