//! The daemon's end of the control socket.
//!
//! The socket is created owner-only (mode 0600, under umask 0177 so it never
//! exists with wider permissions): whoever can talk to it can move every
//! client. With `[control] group` it is then given to that group, mode 0660,
//! and the kernel's word on each peer (`SO_PEERCRED`) decides what it may
//! ask: root (or the daemon's own user) anything, anyone else only the
//! read-only requests ([`Request::is_read_only`]). Those outside the group
//! cannot connect at all. Each connection carries one request line; anything
//! that is not a well-formed [`Request`] gets a one-line error and changes
//! nothing.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Notify,
};

use super::protocol::{MAX_REQUEST_BYTES, Reply, Request, Response};
use crate::oneline::escape_controls;

/// A client that sends no complete line in this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What answers requests. Called on a blocking-task thread: it may take
/// locks and read the kernel maps.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// The bound socket; the file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// May a peer with user id `uid` make changes? Root, and the user the
/// daemon runs as; members of `[control] group` only read.
fn may_change(uid: u32) -> bool {
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// The id of group `name`, or a one-line reason.
fn group_id(name: &str) -> anyhow::Result<libc::gid_t> {
    let c = std::ffi::CString::new(name).context("control.group: contains a NUL byte")?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        bail!(
            "control.group: cannot look up group {name:?}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    if found.is_null() {
        bail!("control.group: no group {name:?} on this system (create it with `groupadd {name}`)");
    }
    Ok(group.gr_gid)
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Bind `path`, owner-only, then (with `group`) `root:group` mode 0660. A
/// socket file left by a daemon that died is replaced; one that a running
/// daemon answers on is an error, so two daemons never fight over one data
/// plane.
pub async fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<ControlSocket> {
    let gid = group.map(group_id).transpose()?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .with_context(|| format!("control.socket: cannot create {}", dir.display()))?;
    }
    match UnixStream::connect(path).await {
        Ok(_) => bail!(
            "control.socket: another balancer daemon is serving {}",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) => {
            // Refused: a stale file from a daemon that was killed.
            fs::remove_file(path).with_context(|| {
                format!("control.socket: cannot remove stale {}", path.display())
            })?;
        }
    }
    // umask is per process; nothing else creates files while the daemon
    // starts, so the window is harmless.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener =
        bound.with_context(|| format!("control.socket: cannot bind {}", path.display()))?;
    let socket = ControlSocket {
        listener,
        path: path.to_path_buf(),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control.socket: cannot restrict {}", path.display()))?;
    if let Some(gid) = gid {
        // Group first, then the mode: never readable by a group not ours.
        std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
            format!("control.group: cannot give {} to the group", path.display())
        })?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).with_context(|| {
            format!("control.group: cannot open {} to the group", path.display())
        })?;
    }
    Ok(socket)
}

/// Answer requests until the task is dropped. After answering a `detach`,
/// notify `detached` (the daemon then exits).
pub async fn serve(socket: ControlSocket, handler: Handler, detached: Arc<Notify>) {
    tracing::info!(path = %socket.path.display(), "control socket listening");
    loop {
        let stream = match socket.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handler, detached) = (Arc::clone(&handler), Arc::clone(&detached));
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, handler)).await {
                Ok(Ok(true)) => detached.notify_one(),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "control: connection failed"),
                Err(_) => tracing::debug!("control: client sent no request in time"),
            }
        });
    }
}

/// Read one request, answer it. `Ok(true)` if it detached the daemon.
async fn answer(stream: UnixStream, handler: Handler) -> std::io::Result<bool> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    BufReader::new(read.take(limit))
        .read_until(b'\n', &mut line)
        .await?;
    let response = match parse(&line) {
        Ok(request) if !request.is_read_only() && !may_change(uid) => Response::Error(format!(
            "permission denied: user {uid} may only run status, lookup and flows; changes need root"
        )),
        Ok(request) => tokio::task::spawn_blocking(move || handler(request))
            .await
            .unwrap_or_else(|e| {
                Response::Error(format!("the request failed inside the daemon: {e}"))
            }),
        Err(message) => Response::Error(message),
    };
    let detached = matches!(response, Response::Ok(Reply::Detached { .. }));
    let mut out = serde_json::to_vec(&response).expect("responses serialize");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    Ok(detached)
}

/// The request on one line, or a one-line reason it is not one.
pub fn parse(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "malformed request: longer than {MAX_REQUEST_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(line).map_err(|_| "malformed request: not UTF-8".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("malformed request: empty".to_owned());
    }
    // serde quotes what it refused (an unknown variant, say) as sent, so a
    // name with a control character in it must not break the line.
    serde_json::from_str(text)
        .map_err(|e| format!("malformed request: {}", escape_controls(&e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_refuses_garbage_in_one_line() {
        assert_eq!(parse(br#"{"request":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse(b"{\"request\":\"backend_drain\",\"service\":\"chat\",\"address\":\"198.18.1.11:3000\"}\n"),
            Ok(Request::BackendDrain { service: "chat".into(), address: "198.18.1.11:3000".into() })
        );
        for (garbage, says) in [
            (&b"hello"[..], "malformed request"),
            (b"", "empty"),
            (b"\xff\xfe", "not UTF-8"),
            (br#"{"request":"reboot"}"#, "unknown variant"),
            (
                br#"{"request":"backend_drain","service":"chat","adress":"198.18.1.11:3000"}"#,
                "unknown field `adress`",
            ),
            (
                br#"{"request":"backend_add","service":"chat"}"#,
                "missing field `address`",
            ),
            // Found by parsers_fuzz: a newline inside the variant's name.
            (
                br#"{"request":"backend_dra\n","service":"chat","address":"[2001:db8::11]:3000"}"#,
                "unknown variant",
            ),
        ] {
            let e = parse(garbage).unwrap_err();
            assert!(e.contains(says), "{garbage:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn only_status_lookup_and_flows_are_read_only() {
        let read = [
            r#"{"request":"status"}"#,
            r#"{"request":"lookup","service":"chat","client":"198.18.0.1","port":null}"#,
            r#"{"request":"flows","service":null,"limit":null}"#,
        ];
        for line in read {
            assert!(parse(line.as_bytes()).unwrap().is_read_only(), "{line}");
        }
        let write = [
            r#"{"request":"detach"}"#,
            r#"{"request":"backend_drain","service":"chat","address":"198.18.1.11:3000"}"#,
            r#"{"request":"backend_set_weight","service":"chat","address":"198.18.1.11:3000","weight":2}"#,
        ];
        for line in write {
            assert!(!parse(line.as_bytes()).unwrap().is_read_only(), "{line}");
        }
        assert!(may_change(0));
    }
}
