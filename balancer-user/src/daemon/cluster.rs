//! `balancer cluster leave|join`: this gateway's part in the cluster's
//! routing. Leaving withdraws every VIP address (BIRD then withdraws the
//! routes, and the router sends the flows to the other gateways, which can
//! carry any packet of any flow); joining announces again the VIPs that
//! have a backend up. Either is remembered across restarts
//! ([`crate::announce`]).

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::Context;
use tracing::info;

use super::Daemon;
use crate::announce;

impl Daemon {
    /// Leave (`true`) or join the cluster; what it did, in one line.
    pub fn set_cluster_left(&mut self, left: bool) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.announce.is_none() || self.announce_ready,
            "this gateway is still pulling its peers' entries and announces nothing yet \
             (`balancer cluster status`); try again once it is ready"
        );
        let a = self.announce.as_mut().context(
            "this gateway announces no VIP: its config has no [announce] section, so there is \
             nothing to leave or join",
        )?;
        let interface = a.interface().to_owned();
        let was = a.left();
        let plan = a.set_left(left, &self.services)?;
        let list = |ips: &BTreeSet<IpAddr>| {
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if left {
            info!(interface, withdrawn = plan.remove.len(), "left the cluster");
            return Ok(match (was, plan.remove.is_empty()) {
                (true, _) => "already left the cluster: no VIP is announced".to_owned(),
                (false, true) => "left the cluster: no VIP was announced".to_owned(),
                (false, false) => format!(
                    "left the cluster: withdrew {} from {interface}; `balancer cluster join` announces again",
                    list(&plan.remove)
                ),
            });
        }
        info!(interface, announced = plan.add.len(), "joined the cluster");
        let served = announce::served(&self.services);
        Ok(match (was, served.is_empty()) {
            (false, true) => "already in the cluster: no VIP has a backend up".to_owned(),
            (false, false) => format!("already in the cluster: announcing {}", list(&served)),
            (true, true) => {
                "joined the cluster: no VIP has a backend up, so none is announced yet".to_owned()
            }
            (true, false) => format!(
                "joined the cluster: announcing {} on {interface}",
                list(&served)
            ),
        })
    }
}
