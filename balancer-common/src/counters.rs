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
    /// Passed: a later IP fragment (no L4 header) whose first fragment was not
    /// seen and whose service cannot place it by client address alone.
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
    /// A packet to a client sent to its learned MAC: the FIB had no
    /// neighbour. Replies keep that path for a clock epoch (about a second),
    /// so they count once per flow per epoch, not per packet.
    NoNeighbourLearnedMac = 12,
    /// Aborted (XDP_ABORTED, a drop): a header the parser had checked was
    /// out of bounds when rewritten. Should stay 0; counted so that no drop
    /// goes unexplained.
    DropInternal = 13,
    /// Passed untouched: an 802.1Q/802.1ad tagged frame. XDP on the parent
    /// interface cannot forward into a VLAN; attach to the VLAN interface
    /// in `tc` mode instead.
    PassVlan = 14,
    /// Passed untouched: an IPv6 extension header the balancer does not walk
    /// (AH, ESP, a routing header with segments left, or more than
    /// `MAX_EXT_HEADERS`).
    PassExtHeader = 15,
    /// An ICMP error about a balanced flow, forwarded to that flow's backend
    /// (or, from a backend, to its client).
    ForwardIcmp = 16,
    /// A later fragment of a balanced datagram, forwarded after its first.
    ForwardFragment = 17,
    /// A new flow's conntrack entry could not be stored (the kernel's map
    /// update failed). The packet still goes on; the flow's next packets
    /// are placed again and its replies pass unrewritten.
    ConntrackInsertFailed = 18,
    /// A client's affinity entry could not be stored. The packet still goes
    /// on; the client's next flows get their Maglev slot.
    AffinityInsertFailed = 19,
    /// A first fragment's rewrite could not be stored. The packet still
    /// goes on; its later fragments are placed as if they came first.
    FragmentInsertFailed = 20,
    /// Dropped: the redirect helper refused a packet (XDP: the device left
    /// REDIRECT_DEVS since it was checked; TC: a bad flag).
    DropRedirectFailed = 21,
    /// Passed untouched: a reply with no conntrack entry from a backend
    /// that is not the one the client's packets go to now (affinity, else
    /// the table; for ambiguous services its `PENDING` entry).
    PassReplyNotChosen = 22,
    /// A reply with no conntrack entry, from the client's backend,
    /// translated from config and forwarded (a SYN-ACK, or the backend's
    /// packet that confirms the flow).
    ForwardReplyWithoutFlow = 23,
    /// A flow confirmed by its backend: conntrack and affinity entries made
    /// and a connection counted.
    FlowConfirmed = 24,
    /// A `PENDING` entry could not be stored. The packet still goes on; its
    /// reply passes unrewritten and the client retransmits.
    PendingInsertFailed = 25,
    /// Passed untouched: a reply with no conntrack entry whose source is a
    /// backend's address but which did not come from that backend's next
    /// hop (the FIB's interface and MAC for it): spoofed.
    PassReplyWrongPath = 26,
    /// A new affinity entry could not be reported to the daemon (its ring
    /// buffer was full): the entry stands here, but cluster peers learn it
    /// only from the next re-announcement.
    AffinityReportFailed = 27,
    /// Passed untouched: a packet of a service the daemon terminates
    /// (`SERVICE_TO_STACK`), for its acceptor on the VIP.
    PassToStack = 28,
}

pub const COUNTER_COUNT: u32 = 29;

/// Entries of the `COUNTERS` map: room beyond [`COUNTER_COUNT`], so that a
/// build which adds counters still adopts the pinned map of this one (a
/// pinned map of another size is refused, and replacing it would need
/// `balancer detach`, which drops the live flows).
pub const COUNTER_SLOTS: u32 = 64;
const _: () = assert!(COUNTER_COUNT <= COUNTER_SLOTS);

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
        Counter::PassVlan,
        Counter::PassExtHeader,
        Counter::ForwardIcmp,
        Counter::ForwardFragment,
        Counter::ConntrackInsertFailed,
        Counter::AffinityInsertFailed,
        Counter::FragmentInsertFailed,
        Counter::DropRedirectFailed,
        Counter::PassReplyNotChosen,
        Counter::ForwardReplyWithoutFlow,
        Counter::FlowConfirmed,
        Counter::PendingInsertFailed,
        Counter::PassReplyWrongPath,
        Counter::AffinityReportFailed,
        Counter::PassToStack,
    ];

    /// The `reason` label for drop counters; `None` for the others.
    pub const fn drop_reason(self) -> Option<&'static str> {
        match self {
            Counter::DropNoBackend => Some("no_backend"),
            Counter::DropBackendDown => Some("backend_down"),
            Counter::DropMalformed => Some("malformed"),
            Counter::DropInternal => Some("internal_error"),
            Counter::DropRedirectFailed => Some("redirect_failed"),
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
            Counter::PassVlan => "pass_vlan",
            Counter::PassExtHeader => "pass_ext_header",
            Counter::ForwardIcmp => "forward_icmp",
            Counter::ForwardFragment => "forward_fragment",
            Counter::ConntrackInsertFailed => "conntrack_insert_failed",
            Counter::AffinityInsertFailed => "affinity_insert_failed",
            Counter::FragmentInsertFailed => "fragment_insert_failed",
            Counter::DropRedirectFailed => "drop_redirect_failed",
            Counter::PassReplyNotChosen => "pass_reply_not_chosen",
            Counter::ForwardReplyWithoutFlow => "forward_reply_without_flow",
            Counter::FlowConfirmed => "flows_confirmed",
            Counter::PendingInsertFailed => "pending_insert_failed",
            Counter::PassReplyWrongPath => "pass_reply_wrong_path",
            Counter::AffinityReportFailed => "affinity_report_failed",
            Counter::PassToStack => "pass_to_stack",
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

    #[test]
    fn names_and_drop_reasons_are_unique() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
                if a.drop_reason().is_some() {
                    assert_ne!(a.drop_reason(), b.drop_reason());
                }
            }
        }
    }

    /// Each failed kernel operation has a counter of its own; only the
    /// failed redirect loses the packet, so only it is a drop reason.
    #[test]
    fn failed_kernel_operations_are_counted_by_name() {
        for (c, name) in [
            (Counter::ConntrackInsertFailed, "conntrack_insert_failed"),
            (Counter::AffinityInsertFailed, "affinity_insert_failed"),
            (Counter::FragmentInsertFailed, "fragment_insert_failed"),
            (Counter::PendingInsertFailed, "pending_insert_failed"),
            (Counter::AffinityReportFailed, "affinity_report_failed"),
        ] {
            assert!(Counter::ALL.contains(&c));
            assert_eq!(c.name(), name);
            assert_eq!(c.drop_reason(), None);
        }
        assert!(Counter::ALL.contains(&Counter::DropRedirectFailed));
        assert_eq!(
            Counter::DropRedirectFailed.drop_reason(),
            Some("redirect_failed")
        );
    }
}
