//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! `HC' = ~(~HC + ~m + m')`).
//!
//! All values are the packet's bytes loaded as native words: the one's
//! complement sum does not care about byte order as long as every term is
//! loaded the same way, so nothing is byte-swapped.

#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The `~m + m'` part of RFC 1624 for any number of changed words, to add
/// to a checksum with [`apply`] (or hand to `bpf_l4_csum_replace`).
#[derive(Clone, Copy, Default)]
pub struct Diff(pub u32);

impl Diff {
    #[inline(always)]
    pub fn u16(self, old: u16, new: u16) -> Diff {
        Diff(self.0 + u32::from(!old) + u32::from(new))
    }

    #[inline(always)]
    pub fn u32(self, old: u32, new: u32) -> Diff {
        let not_old = !old;
        Diff(self.0 + (not_old & 0xffff) + (not_old >> 16) + (new & 0xffff) + (new >> 16))
    }

    /// Four words, of which an IPv4 address uses the first only.
    #[inline(always)]
    pub fn addr(self, old: &[u32; 4], new: &[u32; 4], words: usize) -> Diff {
        let mut d = self.u32(old[0], new[0]);
        if words == 4 {
            d = d
                .u32(old[1], new[1])
                .u32(old[2], new[2])
                .u32(old[3], new[3]);
        }
        Diff(u32::from(fold(d.0)))
    }
}

/// The checksum `check` after the changes in `diff`.
#[inline(always)]
pub fn apply(check: u16, diff: Diff) -> u16 {
    !fold(u32::from(!check) + diff.0)
}
