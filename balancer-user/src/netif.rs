//! Interface facts through ioctl (not `/sys/class/net`, which `ip netns
//! exec` remounts).

use std::ffi::CString;

use anyhow::bail;

/// The ifindex of `name`, or one clear error naming the config field.
pub fn ifindex(field: &str, name: &str) -> anyhow::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| anyhow::anyhow!("{field}: invalid interface name {name:?}"))?;
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("{field}: no interface named {name:?} in this network namespace");
    }
    Ok(index)
}
