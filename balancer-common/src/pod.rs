//! `aya::Pod` for every map type: they are `repr(C)`, `Copy`, and have no
//! implicit padding (asserted in `types`).
use crate::types::*;

macro_rules! pod {
    ($($t:ty),* $(,)?) => { $(unsafe impl aya::Pod for $t {})* };
}
pod!(
    ServiceKey,
    Service,
    ServiceSlot,
    Backend,
    AdminRecord,
    BackendName,
    FlowKey,
    Flow,
    BackendVips,
    FragmentKey,
    FragmentNat,
    AffinityKey,
    AffinityEvent,
    Affinity,
    BackendStats,
    Pending
);
