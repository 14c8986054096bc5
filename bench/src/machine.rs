//! What the figures were measured on.

use std::process::Command;

pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub mem_gib: u64,
    pub kernel: String,
    pub date: String,
    /// Share of the CPUs busy over a second before the bench started: other
    /// work on the machine skews every figure (ratios less: both sides of
    /// a ratio are measured in the same round).
    pub background_busy: f64,
}

/// (busy, total) jiffies from the first line of /proc/stat.
pub fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the machine's CPUs busy over the next `d`.
pub fn busy_over(d: std::time::Duration) -> f64 {
    let (b0, t0) = cpu_jiffies();
    std::thread::sleep(d);
    let (b1, t1) = cpu_jiffies();
    (b1 - b0) as f64 / (t1 - t0).max(1) as f64
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_gib: (mem_kib as f64 / 1048576.0).round() as u64,
            kernel,
            date,
            background_busy: busy_over(std::time::Duration::from_secs(1)),
        }
    }
}
