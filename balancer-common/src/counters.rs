//! Global packet counters, per CPU, indexed by [`Counter`]. The drop reasons
//! are what `balancer_packets_dropped_total{reason}` reports.

/// Index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Dropped: a VIP packet, but the service has no usable backend.
    DropNoBackend = 0,
    /// Dropped: the table pointed at a backend that is not up (a swap race).
    DropBackendDown = 1,
    /// Dropped: a VIP packet whose headers are inconsistent (bad IHL, L4 header
    /// cut short after the ports).
    DropMalformed = 2,
    /// Passed: not addressed to a VIP nor a reply of a balanced flow.
    PassNotOurs = 3,
    /// Passed: frame too short for the headers it announces.
    PassTruncated = 4,
    /// Passed: an IP fragment (no L4 header to balance on).
    PassFragment = 5,
    /// Passed after NAT: no neighbour entry yet, the kernel resolves it.
    PassNoNeighbour = 6,
    /// Passed after NAT: the FIB had no forwarding answer (unreachable, ...).
    PassFibOther = 7,
    /// Passed untouched: TTL would expire, the kernel sends the ICMP error.
    PassTtlExpired = 8,
    /// Forwarded from client to backend.
    ForwardToBackend = 9,
    /// Forwarded from backend to client.
    ForwardToClient = 10,
    /// Redirect to an interface not in REDIRECT_DEVS: passed to the kernel.
    PassNoRedirectDev = 11,
    /// Reply forwarded to the client's learned MAC: the FIB had no neighbour.
    NoNeighbourLearnedMac = 12,
    /// Aborted (XDP_ABORTED, a drop): a header the parser had checked was
    /// out of bounds when rewritten. Should stay 0; counted so that no drop
    /// goes unexplained.
    DropInternal = 13,
}

pub const COUNTER_COUNT: u32 = 14;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::DropNoBackend,
        Counter::DropBackendDown,
        Counter::DropMalformed,
        Counter::PassNotOurs,
        Counter::PassTruncated,
        Counter::PassFragment,
        Counter::PassNoNeighbour,
        Counter::PassFibOther,
        Counter::PassTtlExpired,
        Counter::ForwardToBackend,
        Counter::ForwardToClient,
        Counter::PassNoRedirectDev,
        Counter::NoNeighbourLearnedMac,
        Counter::DropInternal,
    ];

    /// The `reason` label for drop counters; `None` for the others.
    pub const fn drop_reason(self) -> Option<&'static str> {
        match self {
            Counter::DropNoBackend => Some("no_backend"),
            Counter::DropBackendDown => Some("backend_down"),
            Counter::DropMalformed => Some("malformed"),
            Counter::DropInternal => Some("internal_error"),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropBackendDown => "drop_backend_down",
            Counter::DropMalformed => "drop_malformed",
            Counter::PassNotOurs => "pass_not_ours",
            Counter::PassTruncated => "pass_truncated",
            Counter::PassFragment => "pass_fragment",
            Counter::PassNoNeighbour => "pass_no_neighbour",
            Counter::PassFibOther => "pass_fib_other",
            Counter::PassTtlExpired => "pass_ttl_expired",
            Counter::ForwardToBackend => "forward_to_backend",
            Counter::ForwardToClient => "forward_to_client",
            Counter::PassNoRedirectDev => "pass_no_redirect_dev",
            Counter::NoNeighbourLearnedMac => "forward_to_learned_mac",
            Counter::DropInternal => "drop_internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_indexed_by_discriminant() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
