//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! `HC' = ~(~HC + ~m + m')`).
//!
//! All values are the packet's bytes loaded as native words: the one's
//! complement sum does not care about byte order as long as every term is
//! loaded the same way, so nothing is byte-swapped.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after a 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The checksum after a 32-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let not_old = !old;
    !fold(u32::from(!check) + (not_old & 0xffff) + (not_old >> 16) + (new & 0xffff) + (new >> 16))
}
