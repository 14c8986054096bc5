//! A server process the bench started (nginx, HAProxy): SIGTERM on drop,
//! then SIGKILL if it has not gone within a few seconds.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use balancer_tests::NetNs;

pub struct Server {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// `cmd args` in `ns`, its output into `log` (a file the caller picked).
    pub fn spawn(ns: &NetNs, what: &str, cmd: &str, args: &[&str], log: &Path) -> Result<Server> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = ns
            .command(cmd, args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {what}"))?;
        Ok(Server {
            what: what.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// Fail if the process has already exited (a bad config, a port taken).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} exited at start ({status}): {}", self.what, text.trim());
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
