//! wrk from every client host at once, one process each (`-t1 -c16`), and
//! its results summed. A Lua `done` hook prints one machine-readable line,
//! so nothing depends on wrk's human output.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail};
use balancer_tests::NetNs;

/// Connections per client host (the design's 3 hosts × 16).
pub const CONNECTIONS: u32 = 16;

const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %.1f %.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// HTTP/1.1 keep-alive: requests on established connections.
    KeepAlive,
    /// `Connection: close`: one request per connection.
    Close,
}

/// One wrk process's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct HostResult {
    requests: u64,
    duration_us: u64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
}

/// All hosts together.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub requests: u64,
    pub per_sec: f64,
    pub errors: u64,
    /// Mean of the hosts' medians.
    pub p50_us: f64,
    /// Worst of the hosts' 99th percentiles.
    pub p99_us: f64,
}

fn parse(line: &str) -> Option<HostResult> {
    let f: Vec<&str> = line.strip_prefix("BENCH ")?.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(HostResult {
        requests: n(0)?,
        duration_us: n(1)?,
        errors: (2..=6).map(n).sum::<Option<u64>>()?,
        p50_us: f.get(7)?.parse().ok()?,
        p99_us: f.get(8)?.parse().ok()?,
    })
}

fn combine(hosts: &[HostResult]) -> Load {
    let requests = hosts.iter().map(|h| h.requests).sum();
    let secs = hosts.iter().map(|h| h.duration_us).max().unwrap_or(1) as f64 / 1e6;
    Load {
        requests,
        per_sec: requests as f64 / secs,
        errors: hosts.iter().map(|h| h.errors).sum(),
        p50_us: hosts.iter().map(|h| h.p50_us).sum::<f64>() / hosts.len().max(1) as f64,
        p99_us: hosts.iter().map(|h| h.p99_us).fold(0.0, f64::max),
    }
}

/// What one host's wrk asks for, when not `GET /` alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Path and query, from the leading `/`.
    pub path: String,
    /// Extra header lines (`Name: value`).
    pub headers: Vec<String>,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            path: "/".into(),
            headers: Vec::new(),
        }
    }
}

/// Run wrk for `duration` from each host against its target, all at once.
pub fn run(
    hosts: &[NetNs],
    targets: &[SocketAddr],
    workload: Workload,
    duration: Duration,
    lua: &std::path::Path,
) -> Result<Load> {
    let requests = vec![Request::default(); hosts.len()];
    run_requests(hosts, targets, &requests, workload, duration, lua)
}

/// [`run`], each host asking for its own [`Request`].
pub fn run_requests(
    hosts: &[NetNs],
    targets: &[SocketAddr],
    requests: &[Request],
    workload: Workload,
    duration: Duration,
    lua: &std::path::Path,
) -> Result<Load> {
    std::fs::write(lua, REPORT_LUA)?;
    let secs = format!("{}s", duration.as_secs().max(1));
    let mut children = Vec::new();
    for ((host, target), request) in hosts.iter().zip(targets).zip(requests) {
        let mut args = vec![
            "-t1".to_owned(),
            format!("-c{CONNECTIONS}"),
            format!("-d{secs}"),
            "--timeout".into(),
            "2s".into(),
        ];
        args.extend(["-s".into(), lua.display().to_string()]);
        if workload == Workload::Close {
            args.extend(["-H".into(), "Connection: close".into()]);
        }
        for h in &request.headers {
            args.extend(["-H".into(), h.clone()]);
        }
        args.push(format!("http://{target}{}", request.path));
        let child = host
            .command("wrk", &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start wrk")?;
        children.push(child);
    }
    let mut results = Vec::new();
    for child in children {
        // wrk stops by itself after -d; Ctrl-C reaches it too.
        let out = child.wait_with_output().context("wait for wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find_map(parse) {
            Some(r) => results.push(r),
            None => bail!(
                "wrk printed no result ({}): {}{}",
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
    crate::stop::check()?;
    Ok(combine(&results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_combines() {
        let a = parse("BENCH 1000 2000000 0 1 0 0 2 150.0 900.5").unwrap();
        assert_eq!(
            a,
            HostResult {
                requests: 1000,
                duration_us: 2_000_000,
                errors: 3,
                p50_us: 150.0,
                p99_us: 900.5
            }
        );
        let b = HostResult {
            requests: 3000,
            duration_us: 2_000_000,
            errors: 0,
            p50_us: 250.0,
            p99_us: 800.0,
        };
        let load = combine(&[a, b]);
        assert_eq!(load.per_sec, 2000.0);
        assert_eq!(load.p50_us, 200.0);
        assert_eq!(load.p99_us, 900.5);
        assert!(parse("Running 2s test").is_none());
    }
}

/// Measurements by gateway and workload, one per round, in the order the
/// gateways first ran.
#[derive(Debug)]
pub struct Runs<G, M> {
    runs: Vec<(G, Workload, Vec<M>)>,
}

impl<G, M> Default for Runs<G, M> {
    fn default() -> Self {
        Runs { runs: Vec::new() }
    }
}

impl<G: Copy + PartialEq, M> Runs<G, M> {
    pub fn push(&mut self, gateway: G, workload: Workload, m: M) {
        match self
            .runs
            .iter_mut()
            .find(|(g, w, _)| *g == gateway && *w == workload)
        {
            Some((_, _, v)) => v.push(m),
            None => self.runs.push((gateway, workload, vec![m])),
        }
    }

    pub fn get(&self, gateway: G, workload: Workload) -> &[M] {
        self.runs
            .iter()
            .find(|(g, w, _)| *g == gateway && *w == workload)
            .map_or(&[], |(_, _, v)| v)
    }

    /// How many rounds ran (of the first gateway and workload).
    pub fn rounds(&self) -> usize {
        self.runs.first().map_or(0, |(_, _, v)| v.len())
    }
}
