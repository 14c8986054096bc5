//! A network namespace owned by one test: created with a random suffix so
//! parallel tests and leftovers of earlier runs never collide, deleted on
//! drop (also while unwinding from a failed assertion).

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::AsRawFd as _,
    panic,
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

/// Prefix of every namespace this harness creates (`ip netns list | grep lbt-`
/// finds the leftovers of a killed run).
pub const PREFIX: &str = "lbt";

/// Bound on `wait_ready`: a link event may wait up to a second in the
/// kernel's link-watch queue.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// `ip netns add` turns `/run/netns` into a shared mount on first use, and
/// parallel first uses can each stack their own; serialise them (within this
/// process: cargo runs test binaries one at a time).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Fails the test (never skips it) when not running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "network-namespace tests need root (euid is {euid}): run them as root, \
         or in the VM with `cargo xtask test --vm`"
    );
}

/// Six random hex digits, for namespace names unique to this run.
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 3];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `lbt-<role>-<random>` with its loopback up.
    pub fn new(role: &str) -> Self {
        Self::with_suffix(role, &random_suffix())
    }

    /// Creates `lbt-<role>-<suffix>`, so the namespaces of one topology share
    /// a suffix and are easy to find together.
    pub fn with_suffix(role: &str, suffix: &str) -> Self {
        require_root();
        let name = format!("{PREFIX}-{role}-{suffix}");
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            check(Command::new("ip").args(["netns", "add", &name]));
        }
        let ns = Self { name };
        ns.ip(["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and
    /// returns its result (a panic in `f` is re-raised here). Sockets created
    /// by `f` belong to this namespace for their whole life, so they stay
    /// usable from any thread after `f` returns.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open();
        thread::scope(|scope| {
            // setns changes only the calling thread's namespace, which is
            // why this runs on a thread of its own.
            let thread = scope.spawn(|| {
                enter(&file);
                f()
            });
            thread.join().unwrap_or_else(|p| panic::resume_unwind(p))
        })
    }

    /// Spawns a thread that enters this namespace and then runs `f`: for
    /// workers that open sockets over a long time (see [`NetNs::run`]).
    pub fn spawn_thread<F, R>(&self, f: F) -> thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open();
        thread::spawn(move || {
            enter(&file);
            f()
        })
    }

    /// The namespace's file, to enter it with `setns`.
    fn open(&self) -> File {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"))
    }

    /// `ip netns exec <name> <cmd> <args>`, not yet run: for callers that
    /// want their own stdio or environment.
    pub fn command<I, S>(&self, cmd: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, cmd]).args(args);
        command
    }

    /// Runs a command in the namespace; panics with its stderr if it fails.
    pub fn exec<I, S>(&self, cmd: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        check(&mut self.command(cmd, args))
    }

    /// Starts a command in the namespace (stdio inherited); the caller owns
    /// the child and its exit status.
    pub fn spawn<I, S>(&self, cmd: &str, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(cmd, args);
        command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"))
    }

    /// `ip -n <name> <args>`, checked. Cheaper than `exec("ip", ..)`: no
    /// new mount namespace.
    pub fn ip<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        check(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs many `ip` commands (one per line, without the leading `ip`) in
    /// one process, e.g. the dozens of client addresses.
    pub fn ip_batch(&self, lines: &[String]) {
        let mut command = Command::new("ip");
        command
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(lines.join("\n").as_bytes())
            .expect("write ip batch");
        drop(stdin);
        let output = child.wait_with_output().expect("wait for ip batch");
        assert_success(&command, &output);
    }

    /// Sets `net.*` sysctls (e.g. `("net.ipv4.ip_forward", "1")`) in this
    /// namespace.
    pub fn sysctl(&self, settings: &[(&str, &str)]) {
        let args = settings.iter().map(|(k, v)| format!("{k}={v}"));
        self.exec(
            "sysctl",
            ["-q", "-w"].map(String::from).into_iter().chain(args),
        );
    }

    /// Waits until `ifname` carries traffic: operstate UP and no IPv6
    /// address still `tentative`. Until then the kernel has not joined the
    /// addresses' solicited-node groups, so neighbour solicitations for them
    /// go unanswered and a first connection stalls for a SYN retransmit.
    /// (With `accept_dad = 0` an address leaves `tentative` right after the
    /// join; `nodad` would hide the wait, as such addresses never show it.)
    pub fn wait_ready(&self, ifname: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let link = self.ip(["-o", "link", "show", "dev", ifname]);
            let tentative = self.ip(["-6", "-o", "addr", "show", "dev", ifname, "tentative"]);
            let up = String::from_utf8_lossy(&link.stdout).contains(" state UP ");
            if up && tentative.stdout.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ifname} in {} not ready after {READY_TIMEOUT:?}: {}{}",
                self.name,
                String::from_utf8_lossy(&link.stdout),
                String::from_utf8_lossy(&tentative.stdout),
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The interface's index inside this namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let c_name = std::ffi::CString::new(ifname).expect("interface name without NUL");
        // SAFETY: a valid NUL-terminated string that outlives the call.
        let index = self.run(|| unsafe { libc::if_nametoindex(c_name.as_ptr()) });
        assert!(index != 0, "no interface {ifname} in {}", self.name);
        index
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        // Links inside die with the namespace once the last socket or
        // process holding it is gone.
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("ip netns del {}: {e}", self.name),
        }
    }
}

/// Runs `command` to completion; panics with its stderr if it fails.
fn check(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert_success(command, &output);
    output
}

fn assert_success(command: &Command, output: &Output) {
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Move the calling thread into the namespace `file` is.
fn enter(file: &File) {
    // SAFETY: a valid namespace fd; no memory is involved.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns: {}", io::Error::last_os_error());
    }
}
