//! The lookups on the maps: a packet's service, a reply's flow, a
//! backend that is up. Each takes a 5-tuple ([`FlowKey`]), not a packet.

use balancer_common::{
    maps::{MAX_VIPS_PER_BACKEND, PORT_SHARED},
    types::{Backend, Flow, FlowKey, Service, ServiceKey},
};

use crate::{
    maps::{BACKEND_PORTS, BACKEND_VIPS, BACKENDS, CONNTRACK, SERVICE_SLOTS, SERVICES, VIP_PORTS},
    scratch::{scratch, store_words},
};

/// The service whose VIP the packet of 5-tuple `key` is addressed to. Array reads by the
/// destination port (see `VIP_PORTS`) where one service has that port, as
/// most do; a SERVICES lookup, which hashes a 20-byte key, only where
/// several do.
#[inline(always)]
pub fn service_for(key: &FlowKey) -> Option<&'static Service> {
    let port = u32::from(u16::from_be(key.dport));
    match *VIP_PORTS.get(port)? {
        0 => None,
        PORT_SHARED => {
            let vip = ServiceKey {
                addr: key.dst,
                port: key.dport,
                proto: key.proto,
                family: key.family,
            };
            unsafe { SERVICES.get(&vip) }
        }
        service => {
            let slot = SERVICE_SLOTS.get(service - 1)?;
            let vip = &slot.vip;
            let ours = vip.addr == key.dst
                && vip.port == key.dport
                && vip.proto == key.proto
                && vip.family == key.family;
            ours.then_some(&slot.service)
        }
    }
}

/// What a backend → client packet finds in conntrack.
pub enum Reply {
    /// Not from a backend's address:port: not a reply.
    NotOurs,
    /// The flow's entry, whose backend sent the packet, and the flow's VIP.
    Flow(*mut Flow, &'static ServiceKey),
    /// The flow's entry names another backend, and the flow's VIP: the
    /// packet is not the flow's (a host that is not the flow's backend gets
    /// nothing rewritten), unless that flow is over and the client reuses
    /// its 4-tuple (`paths::reopened`).
    OtherBackend(*mut Flow, &'static ServiceKey),
    /// No entry: a flow its backend has not confirmed yet, or whose entry
    /// is gone (`confirm`).
    NoFlow,
}

/// The flow a backend → client packet (`reply`, its 5-tuple) belongs to:
/// the client's conntrack entry, its key rebuilt with the VIP of the
/// sender's service (or each VIP the sender serves, when its port is
/// shared; see `BACKEND_PORTS`). The key stays in `Scratch::reply_key`.
#[inline(always)]
pub fn reply_flow(reply: &FlowKey) -> Reply {
    let port = u32::from(u16::from_be(reply.sport));
    let Some(&who) = BACKEND_PORTS.get(port) else {
        return Reply::NotOurs;
    };
    match who {
        0 => Reply::NotOurs,
        PORT_SHARED => {
            let endpoint = ServiceKey {
                addr: reply.src,
                port: reply.sport,
                proto: reply.proto,
                family: reply.family,
            };
            let Some(vips) = (unsafe { BACKEND_VIPS.get(&endpoint) }) else {
                return Reply::NotOurs;
            };
            let mut found = Reply::NoFlow;
            for i in 0..MAX_VIPS_PER_BACKEND {
                if i as u32 >= vips.count {
                    break;
                }
                match flow_of_reply(reply, &vips.vips[i]) {
                    Reply::Flow(flow, vip) => return Reply::Flow(flow, vip),
                    Reply::OtherBackend(flow, vip) => found = Reply::OtherBackend(flow, vip),
                    _ => {}
                }
            }
            found
        }
        service => {
            let Some(slot) = SERVICE_SLOTS.get(service - 1) else {
                return Reply::NotOurs;
            };
            let vip = &slot.vip;
            if vip.proto != reply.proto || vip.family != reply.family {
                return Reply::NotOurs;
            }
            flow_of_reply(reply, vip)
        }
    }
}

/// Is `key` (a packet's 5-tuple) addressed to a port some backend serves
/// from? Such a packet that is not for a VIP opens or continues a direct
/// flow (see `DIRECT`).
#[inline(always)]
pub fn to_backend_port(key: &FlowKey) -> bool {
    let port = u32::from(u16::from_be(key.dport));
    BACKEND_PORTS.get(port).is_some_and(|&who| who != 0)
}

/// The conntrack entry of the flow `reply` answers if its client spoke to
/// `vip`.
#[inline(always)]
fn flow_of_reply(reply: &FlowKey, vip: &'static ServiceKey) -> Reply {
    // Built in scratch space: a 40-byte key on the stack would push the
    // common path past 6.1's stack bound.
    let Some(scratch) = scratch() else {
        return Reply::NotOurs;
    };
    let key = &mut scratch.reply_key;
    client_key(key, reply, vip);
    let Some(flow) = CONNTRACK.get_ptr_mut(&*key) else {
        return Reply::NoFlow;
    };
    match BACKENDS.get(unsafe { (*flow).backend_id }) {
        Some(b) if b.in_use() && b.addr == reply.src && b.port == reply.sport => {
            Reply::Flow(flow, vip)
        }
        _ => Reply::OtherBackend(flow, vip),
    }
}

/// Fill `key` with the conntrack key of the flow `reply` answers, if its
/// client spoke to `vip`: the client's packets' 5-tuple.
#[inline(always)]
pub fn client_key(key: &mut FlowKey, reply: &FlowKey, vip: &ServiceKey) {
    store_words(&mut key.src, &reply.dst);
    store_words(&mut key.dst, &vip.addr);
    key.sport = reply.dport;
    key.dport = vip.port;
    key.proto = reply.proto;
    key.family = reply.family;
    key._pad = [0; 2];
}

/// A backend by id, if that slot is in use and up (draining counts as up).
#[inline(always)]
pub fn backend_if_up(id: u32, service_id: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(id)?;
    (backend.is_up() && backend.service_id == service_id).then_some(backend)
}
