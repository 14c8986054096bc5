//! What the balancer decides for a packet, before `ctx::Frame::verdict`
//! spells it for the hook.

/// A verdict before it is spelled for the hook.
#[derive(Clone, Copy)]
pub enum Action {
    Pass,
    Drop,
    /// A header the parser had checked was out of bounds later: a bug.
    Aborted,
    /// Out of the interface it came in on.
    Tx,
    /// Out of another interface.
    Redirect(u32),
}
