//! Attaching the program to an interface so that it outlives the daemon,
//! and so that a restarted daemon swaps its program in without a moment
//! where the interface has none.
//!
//! - XDP: a bpf_link, pinned as `link_xdp_<ifname>`; a restart replaces the
//!   program inside the pinned link.
//! - TC on kernels with TCX (6.6+): the same, with a TCX link pinned as
//!   `link_tc_<ifname>`.
//! - TC on older kernels: a cls_bpf filter (direct-action) on the clsact
//!   ingress hook at a fixed priority and handle. Netlink filters do not
//!   die with the process; a restart replaces the filter's program in
//!   place, and `detach` deletes the filters by program name.
//!
//! Switching `mode` between runs removes the other mode's attachment once
//! the new one is in place.

use std::{fs, io, path::Path};

use anyhow::{Context, bail};
use aya::{
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpError, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use balancer_common::maps::PROG_TC;
use tracing::{info, warn};

use crate::pin;

/// An interface to attach to: the config field it came from, its name and
/// index.
pub struct Interface {
    pub field: &'static str,
    pub name: String,
    pub ifindex: u32,
}

/// The cls_bpf filter's place on pre-TCX kernels: ours, so a restart finds
/// and replaces it.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

pub fn xdp(program: &mut Xdp, pin_dir: &Path, iface: &Interface) -> anyhow::Result<()> {
    let pin_path = pin::xdp_link(pin_dir, &iface.name);
    let link_id = if let Some(old) = unpin(&pin_path)? {
        let link = XdpLink::try_from(old).context("the pinned link is not an XDP link")?;
        info!(interface = %iface.name, "adopting the pinned XDP link");
        program
            .attach_to_link(link)
            .context("cannot replace the program in the pinned link")?
    } else {
        let what = || format!("{}: cannot attach XDP to {}", iface.field, iface.name);
        match program.attach_to_if_index(iface.ifindex, XdpMode::Driver) {
            Ok(id) => id,
            // The driver has no native XDP: the generic hook is the only
            // one there is. Any other refusal (another program attached,
            // no permission) is the reason to give.
            Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
                warn!(interface = %iface.name, "the driver has no native XDP ({e}); using generic (skb) XDP");
                program
                    .attach_to_if_index(iface.ifindex, XdpMode::Skb)
                    .with_context(what)?
            }
            Err(e) => return Err(e).with_context(what),
        }
    };
    let link = program.take_link(link_id)?;
    let Ok(fd_link) = FdLink::try_from(link) else {
        bail!(
            "{}: the kernel attached XDP to {} without a bpf_link (kernel too old to pin it)",
            iface.field,
            iface.name
        );
    };
    fd_link
        .pin(&pin_path)
        .with_context(|| format!("cannot pin {}", pin_path.display()))?;
    remove_tc(pin_dir, &iface.name)
}

pub fn tc(program: &mut SchedClassifier, pin_dir: &Path, iface: &Interface) -> anyhow::Result<()> {
    let what = || format!("{}: cannot attach TC to {}", iface.field, iface.name);
    if has_tcx() {
        let pin_path = pin::tc_link(pin_dir, &iface.name);
        let link_id = if let Some(old) = unpin(&pin_path)? {
            let link =
                SchedClassifierLink::try_from(old).context("the pinned link is not a TCX link")?;
            info!(interface = %iface.name, "adopting the pinned TCX link");
            program
                .attach_to_link(link)
                .context("cannot replace the program in the pinned link")?
        } else {
            program
                .attach_with_options(
                    &iface.name,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .with_context(what)?
        };
        let fd_link =
            FdLink::try_from(program.take_link(link_id)?).context("the TCX link has no fd")?;
        fd_link
            .pin(&pin_path)
            .with_context(|| format!("cannot pin {}", pin_path.display()))?;
    } else {
        // EEXIST: there from a previous run. Anything else (no sch_ingress
        // in this kernel) makes the attach fail, and is the reason to give.
        if let Err(e) = tc::qdisc_add_clsact(&iface.name)
            && !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
        {
            return Err(e).with_context(|| format!("{}: cannot add the clsact qdisc", what()));
        }
        let options = || NlOptions {
            priority: TC_PRIORITY,
            handle: TC_HANDLE,
            classid: None,
        };
        let link_id = match program.attach_with_options(
            &iface.name,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(options()),
        ) {
            Ok(id) => id,
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                // Our filter is there (a previous daemon's): replace its program.
                let link = SchedClassifierLink::attached(
                    &iface.name,
                    TcAttachType::Ingress,
                    TC_PRIORITY,
                    TC_HANDLE,
                    None,
                )
                .with_context(what)?;
                info!(interface = %iface.name, "replacing the program of the existing cls_bpf filter");
                program.attach_to_link(link).with_context(what)?
            }
            Err(e) => return Err(e).with_context(what),
        };
        // Dropping a netlink link would delete the filter: it must outlive us.
        std::mem::forget(program.take_link(link_id)?);
    }
    remove_xdp(pin_dir, &iface.name)
}

/// A previous daemon's link pinned at `pin_path`, taken over (its pin is
/// written again once the new program is in it).
fn unpin(pin_path: &Path) -> anyhow::Result<Option<FdLink>> {
    if !pin_path.exists() {
        return Ok(None);
    }
    let link = PinnedLink::from_pin(pin_path)
        .with_context(|| format!("cannot open pinned link {}", pin_path.display()))?;
    Ok(Some(link.unpin()?))
}

/// TCX links (bpf_link for TC) arrived in 6.6.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The errno a failed attach carries: from `bpf(2)` (links) or from
/// netlink (filters, and XDP on kernels without XDP links).
fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(XdpError::NetlinkError(n))
        | ProgramError::TcError(tc::TcError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    }
}

/// Drop a previous run's XDP attachment (its pinned link) on `ifname`.
fn remove_xdp(pin_dir: &Path, ifname: &str) -> anyhow::Result<()> {
    remove_pin(&pin::xdp_link(pin_dir, ifname))
}

/// Drop a previous run's TC attachment on `ifname`: the pinned TCX link,
/// or the cls_bpf filter.
fn remove_tc(pin_dir: &Path, ifname: &str) -> anyhow::Result<()> {
    remove_pin(&pin::tc_link(pin_dir, ifname))?;
    remove_tc_filter(ifname)
        .with_context(|| format!("cannot remove the cls_bpf filter on {ifname}"))
}

/// Remove a pinned link (which detaches it); none there is no error.
fn remove_pin(pin_path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(pin_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", pin_path.display()))
        }
        _ => Ok(()),
    }
}

/// Delete the cls_bpf filters running our program on `ifname`; none there
/// is no error.
fn remove_tc_filter(ifname: &str) -> Result<(), tc::TcError> {
    match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, PROG_TC) {
        Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Delete every cls_bpf filter running our program in this network
/// namespace (pre-TCX kernels; links are removed with the pins). Best
/// effort, as the pins still go: a failure is logged.
pub fn remove_tc_filters() {
    let names = match interface_names() {
        Ok(names) => names,
        Err(e) => {
            warn!(error = %e, "cannot list the interfaces to remove cls_bpf filters from");
            return;
        }
    };
    for name in names {
        if let Err(e) = remove_tc_filter(&name) {
            warn!(interface = %name, error = %e, "cannot remove the cls_bpf filter");
        }
    }
}

/// The interface names of this network namespace.
fn interface_names() -> std::io::Result<Vec<String>> {
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut i = 0;
    loop {
        let entry = unsafe { &*list.add(i) };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        names.push(
            unsafe { std::ffi::CStr::from_ptr(entry.if_name) }
                .to_string_lossy()
                .into_owned(),
        );
        i += 1;
    }
    unsafe { libc::if_freenameindex(list) };
    Ok(names)
}
