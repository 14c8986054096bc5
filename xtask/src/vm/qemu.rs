//! Booting the guest in QEMU and reading what it says on its serial console.
//!
//! The guest's init (see `guest.rs`) reports with lines starting with
//! [`MARKER`]; everything else is the test binaries' own output, which is
//! echoed as it comes and parsed for libtest's results. The host decides
//! pass or fail from the transcript, never from QEMU's exit status alone.

use std::{
    collections::VecDeque,
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// Start of every line the guest's init writes for the host.
pub const MARKER: &str = "@@xtask-vm";
/// Once the guest said `done`, how long it may take to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// Lines of guest output kept to show when the guest ends without `done`.
const TAIL: usize = 40;

/// One guest boot.
pub struct Machine {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub cpus: usize,
    /// The whole run, boot to power-off.
    pub timeout: Duration,
}

/// How the QEMU process ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// QEMU exited (the guest powered off, or rebooted after a panic).
    Exited,
    /// Killed at the deadline.
    TimedOut,
}

impl Machine {
    /// Boots the guest, feeds every console line to `transcript` and to
    /// `echo`, and returns when QEMU exits or the deadline passes (QEMU is
    /// killed then).
    pub fn boot(&self, transcript: &mut Transcript, mut echo: impl FnMut(&str)) -> Result<End> {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(accelerator())
        .args([
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &self.memory_mib.to_string(),
        ])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initrd)
        // panic=-1 reboots at once and -no-reboot turns that into QEMU's
        // exit; oops=panic makes a kernel oops end the run, not hide in
        // the log.
        .args(["-append", "console=ttyS0 quiet panic=-1 oops=panic"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        eprintln!("$ {}", cmd::display(&qemu));
        let mut child = qemu
            .spawn()
            .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });

        let mut deadline = Instant::now() + self.timeout;
        let end = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    echo(&line);
                    let was_done = transcript.done.is_some();
                    transcript.line(&line);
                    if !was_done && transcript.done.is_some() {
                        deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break End::Exited,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    break End::TimedOut;
                }
            }
        };
        child.wait().context("wait for qemu")?;
        let _ = reader.join();
        Ok(end)
    }
}

/// KVM when it can run a guest here, else TCG (emulation, several times
/// slower). `/dev/kvm` alone is not enough: without the CPU's
/// virtualisation extensions (`vmx`/`svm`, missing under most nested
/// setups) QEMU starts but the guest never runs.
fn accelerator() -> [&'static str; 4] {
    let device = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let extensions = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if device && extensions {
        ["-accel", "kvm", "-cpu", "host"]
    } else {
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    }
}

/// What one test binary did in the guest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BinaryRun {
    pub name: String,
    /// Its exit status; `None` while it runs (or if the guest died in it).
    pub exit: Option<i32>,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub filtered: u32,
    /// Names of the tests libtest listed as failed.
    pub failures: Vec<String>,
}

/// Everything learnt from the console so far.
#[derive(Debug, Default)]
pub struct Transcript {
    /// `uname -r` in the guest.
    pub kernel: Option<String>,
    pub binaries: Vec<BinaryRun>,
    /// The init's setup step that failed.
    pub setup_failed: Option<String>,
    /// The init's overall status, once it finished.
    pub done: Option<i32>,
    /// The kernel's `Kernel panic` line.
    pub panic: Option<String>,
    /// The last lines of output.
    pub tail: VecDeque<String>,
    in_failure_list: bool,
}

impl Transcript {
    pub fn line(&mut self, line: &str) {
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
        // Kernel messages may land in the middle of a line: look anywhere.
        if let Some(at) = line.find(MARKER) {
            self.marker(line[at + MARKER.len()..].trim());
            return;
        }
        if let Some(at) = line.find("Kernel panic") {
            self.panic.get_or_insert_with(|| line[at..].to_owned());
            return;
        }
        self.libtest(line);
    }

    fn marker(&mut self, rest: &str) {
        let (word, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "kernel" => self.kernel = Some(arg.to_owned()),
            "run" => {
                self.in_failure_list = false;
                self.binaries.push(BinaryRun {
                    name: arg.to_owned(),
                    ..BinaryRun::default()
                });
            }
            "exit" => {
                let code = arg
                    .rsplit(' ')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1);
                if let Some(run) = self.binaries.last_mut() {
                    run.exit = Some(code);
                }
            }
            "setup-failed" => self.setup_failed = Some(arg.to_owned()),
            "done" => self.done = Some(arg.parse().unwrap_or(-1)),
            _ => {}
        }
    }

    /// libtest's `failures:` name list and `test result:` line.
    fn libtest(&mut self, line: &str) {
        let Some(run) = self.binaries.last_mut() else {
            return;
        };
        if line == "failures:" {
            self.in_failure_list = true;
            return;
        }
        if self.in_failure_list {
            match line.strip_prefix("    ") {
                Some(name) if !name.starts_with(' ') && !name.is_empty() => {
                    if !run.failures.iter().any(|f| f == name) {
                        run.failures.push(name.to_owned());
                    }
                    return;
                }
                _ => self.in_failure_list = false,
            }
        }
        if let Some(summary) = line.trim().strip_prefix("test result: ") {
            for part in summary.split(';') {
                let part = part
                    .trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ");
                let Some((n, what)) = part.split_once(' ') else {
                    continue;
                };
                let Ok(n) = n.parse::<u32>() else { continue };
                match what {
                    "passed" => run.passed += n,
                    "failed" => run.failed += n,
                    "ignored" => run.ignored += n,
                    "filtered out" => run.filtered += n,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(text: &str) -> Transcript {
        let mut t = Transcript::default();
        for line in text.lines() {
            t.line(line);
        }
        t
    }

    #[test]
    fn reads_results_and_failures_from_the_console() {
        let t = transcript(
            "[    1.2] Run /init as init process\r
@@xtask-vm kernel 6.1.0-56-cloud-amd64
@@xtask-vm run mapscan
running 2 tests
test a ... ok
test b ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out; finished in 0.50s

@@xtask-vm exit mapscan 0
@@xtask-vm run gateway
running 2 tests
test balances ... FAILED
test bad_config ... ok

failures:

---- balances stdout ----
thread 'balances' panicked at tests/gateway.rs:1:1:
    indented panic text

failures:
    balances

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 9.00s

[   30.1] veth: some kernel line @@xtask-vm exit gateway 101
@@xtask-vm done 1
",
        );
        assert_eq!(t.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(t.done, Some(1));
        assert_eq!(
            t.binaries,
            [
                BinaryRun {
                    name: "mapscan".into(),
                    exit: Some(0),
                    passed: 2,
                    filtered: 1,
                    ..BinaryRun::default()
                },
                BinaryRun {
                    name: "gateway".into(),
                    exit: Some(101),
                    passed: 1,
                    failed: 1,
                    ignored: 1,
                    failures: vec!["balances".into()],
                    ..BinaryRun::default()
                },
            ]
        );
        assert_eq!(t.panic, None);
    }

    #[test]
    fn notices_setup_failures_and_kernel_panics() {
        let t = transcript(
            "@@xtask-vm setup-failed insmod veth
[    2.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100
",
        );
        assert_eq!(t.setup_failed.as_deref(), Some("insmod veth"));
        assert_eq!(
            t.panic.as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100")
        );
        assert_eq!(t.done, None);
        assert_eq!(t.tail.len(), 2);
    }
}
