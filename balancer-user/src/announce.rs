//! VIP announcement (`[announce]`): while this gateway serves a VIP, the VIP
//! is a host address (/32, /128) on `[announce] interface`, and a routing
//! daemon (BIRD's `protocol direct`, deploy/bird/gateway.conf) exports it
//! to the router; when the address goes, the route is withdrawn and the
//! router sends the VIP's traffic to the other gateways.
//!
//! The rules, in [`plan`]:
//! - a VIP is served while a service on it has a backend that is up
//!   (draining or not: a draining backend still carries its clients);
//! - after `balancer cluster leave` nothing is served, until `cluster join`.
//!   The leave is a file (`[announce] state_file`), so a restart or a reboot
//!   stays out of the cluster;
//! - `balancer detach` removes every VIP address: nothing forwards any more.
//!
//! A daemon that stops (SIGTERM, a crash) leaves the addresses as they are:
//! the pinned data plane keeps forwarding without it, and a restart must
//! not withdraw and re-announce the routes (every flow on this gateway would
//! be rehashed to another and back). A new daemon starts by removing what
//! it does not serve.

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::{config::Announce, metrics::AnnounceSnapshot, netif, rtnetlink, state::ServiceState};

/// The VIP addresses of this gateway and which of them it announces.
pub struct Announcer {
    interface: String,
    ifindex: u32,
    state_file: PathBuf,
    left: bool,
    /// What the daemon put on the interface.
    announced: BTreeSet<IpAddr>,
    /// VIPs a previous daemon may have left there, until the first sync
    /// removes those not served.
    leftovers: BTreeSet<IpAddr>,
    /// Every VIP of the config.
    known: BTreeSet<IpAddr>,
}

/// What a sync changes on the interface.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: BTreeSet<IpAddr>,
    pub remove: BTreeSet<IpAddr>,
}

/// The VIPs served: those with a service that has a backend up.
pub fn served(services: &[ServiceState]) -> BTreeSet<IpAddr> {
    services
        .iter()
        .filter(|s| s.backends.iter().any(|b| b.up))
        .map(|s| s.config.vip.ip())
        .collect()
}

/// Every VIP of `services`.
fn vips(services: &[ServiceState]) -> BTreeSet<IpAddr> {
    services.iter().map(|s| s.config.vip.ip()).collect()
}

/// From what is announced to what should be: `served` unless the gateway
/// has `left`, and none of `announced` or `leftovers` (addresses that may be
/// there) that is not wanted.
pub fn plan(
    left: bool,
    served: &BTreeSet<IpAddr>,
    announced: &BTreeSet<IpAddr>,
    leftovers: &BTreeSet<IpAddr>,
) -> Plan {
    let wanted = if left {
        BTreeSet::new()
    } else {
        served.clone()
    };
    Plan {
        add: wanted.difference(announced).copied().collect(),
        remove: announced
            .union(leftovers)
            .filter(|ip| !wanted.contains(ip))
            .copied()
            .collect(),
    }
}

impl Announcer {
    /// Resolve the interface and read whether this gateway had left the
    /// cluster: everything that can be wrong before the kernel is touched.
    /// `known` are the configured VIPs: any of them may be on the interface
    /// from a previous daemon, and the first [`sync`] removes those not
    /// served.
    ///
    /// [`sync`]: Announcer::sync
    pub fn open(config: &Announce, known: BTreeSet<IpAddr>) -> anyhow::Result<Self> {
        let ifindex = netif::ifindex("announce.interface", &config.interface)?;
        let left = read_left(&config.state_file)?;
        Ok(Announcer {
            interface: config.interface.clone(),
            ifindex,
            state_file: config.state_file.clone(),
            left,
            announced: BTreeSet::new(),
            leftovers: known.clone(),
            known,
        })
    }

    pub fn left(&self) -> bool {
        self.left
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Bring the interface in line with `services`. Each address is its
    /// own request: a failure leaves the others done, and is the error.
    pub fn sync(&mut self, services: &[ServiceState]) -> anyhow::Result<Plan> {
        self.known = vips(services);
        let plan = plan(
            self.left,
            &served(services),
            &self.announced,
            &self.leftovers,
        );
        for &ip in &plan.remove {
            rtnetlink::host_address(rtnetlink::Op::Remove, self.ifindex, ip)
                .with_context(|| format!("announce: cannot remove {ip} from {}", self.interface))?;
            self.announced.remove(&ip);
            tracing::info!(vip = %ip, interface = %self.interface, "VIP withdrawn");
        }
        // What is wanted is added below, and the rest was removed above.
        self.leftovers.clear();
        for &ip in &plan.add {
            rtnetlink::host_address(rtnetlink::Op::Add, self.ifindex, ip)
                .with_context(|| format!("announce: cannot add {ip} to {}", self.interface))?;
            self.announced.insert(ip);
            tracing::info!(vip = %ip, interface = %self.interface, "VIP announced");
        }
        Ok(plan)
    }

    /// `balancer cluster leave` (`true`) or `join`: remember it, then sync.
    pub fn set_left(&mut self, left: bool, services: &[ServiceState]) -> anyhow::Result<Plan> {
        write_left(&self.state_file, left)?;
        self.left = left;
        self.sync(services)
    }

    /// `balancer detach`: every VIP address goes (the left state stays).
    pub fn withdraw_all(&mut self) -> anyhow::Result<()> {
        let all: BTreeSet<IpAddr> = self.known.union(&self.announced).copied().collect();
        for ip in all {
            rtnetlink::host_address(rtnetlink::Op::Remove, self.ifindex, ip)
                .with_context(|| format!("announce: cannot remove {ip} from {}", self.interface))?;
            self.announced.remove(&ip);
        }
        Ok(())
    }

    pub fn snapshot(&self) -> AnnounceSnapshot {
        AnnounceSnapshot {
            interface: self.interface.clone(),
            left: self.left,
            vips: self
                .known
                .union(&self.announced)
                .map(|ip| (ip.to_string(), self.announced.contains(ip)))
                .collect(),
        }
    }
}

/// Has this gateway left the cluster? The state file's existence says so.
fn read_left(path: &Path) -> anyhow::Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => {
            Err(e).with_context(|| format!("announce.state_file: cannot read {}", path.display()))
        }
    }
}

fn write_left(path: &Path, left: bool) -> anyhow::Result<()> {
    let what = || format!("announce.state_file: cannot write {}", path.display());
    if !left {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(what),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(what)?;
    }
    std::fs::write(
        path,
        "This gateway left the cluster (`balancer cluster leave`): it announces no VIP until \
         `balancer cluster join`.\n",
    )
    .with_context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|i| i.parse().unwrap()).collect()
    }

    #[test]
    fn serves_what_has_a_backend_up_unless_left() {
        let served = set(&["198.18.0.100", "2001:db8::100"]);
        let none = set(&[]);
        let p = plan(
            false,
            &served,
            &set(&["198.18.0.100", "198.18.0.101"]),
            &none,
        );
        assert_eq!(p.add, set(&["2001:db8::100"]));
        assert_eq!(p.remove, set(&["198.18.0.101"]));
        let p = plan(true, &served, &set(&["198.18.0.100"]), &none);
        assert_eq!(p.add, none);
        assert_eq!(p.remove, set(&["198.18.0.100"]));
        assert_eq!(plan(false, &served, &served, &none), Plan::default());
        // A new daemon: what is served is added (again: adding is
        // idempotent), what a previous one may have left and is not served
        // goes.
        let p = plan(
            false,
            &set(&["198.18.0.100"]),
            &none,
            &set(&["198.18.0.100", "198.18.0.101"]),
        );
        assert_eq!(p.add, set(&["198.18.0.100"]));
        assert_eq!(p.remove, set(&["198.18.0.101"]));
    }

    #[test]
    fn a_service_with_no_backend_up_serves_nothing() {
        use crate::{config::ServiceConfig, state::BackendState};
        let backend = |up: bool, draining: bool| BackendState {
            id: 0,
            address: "198.18.1.11:80".parse().unwrap(),
            weight: 1,
            up,
            draining,
            runtime: false,
            weight_set: false,
            name: None,
        };
        let service = |vip: &str, backends: Vec<BackendState>| ServiceState {
            id: 0,
            table_base: 0,
            config: ServiceConfig::new("s", vip.parse().unwrap()),
            backends,
            table: Vec::new(),
        };
        let services = [
            service("198.18.0.100:80", vec![backend(false, false)]),
            // Another port of the same VIP, with a draining backend up: its
            // clients still arrive through the route.
            service("198.18.0.100:443", vec![backend(true, true)]),
            service("198.18.0.101:80", vec![backend(false, false)]),
            service("198.18.0.102:80", vec![]),
        ];
        assert_eq!(served(&services), set(&["198.18.0.100"]));
        assert_eq!(
            vips(&services),
            set(&["198.18.0.100", "198.18.0.101", "198.18.0.102"])
        );
    }

    #[test]
    fn the_state_file_remembers_a_leave() {
        let dir = std::env::temp_dir().join(format!("balancer-announce-{}", std::process::id()));
        let path = dir.join("sub/announce.state");
        assert!(!read_left(&path).unwrap());
        write_left(&path, true).unwrap();
        assert!(read_left(&path).unwrap());
        write_left(&path, false).unwrap();
        assert!(!read_left(&path).unwrap());
        write_left(&path, false).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
