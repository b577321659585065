//! Child processes of the development environment: free loopback ports, spawning
//! with a watchdog so nothing outlives a hard-killed test, and stopping politely.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;

/// Ports are picked below Linux's ephemeral range (32768–60999) so that the source
/// port of some outgoing connection cannot take one between our check and the bind.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// Returns `count` distinct ports on 127.0.0.1 that were free a moment ago.
///
/// Each is checked by binding it; another process may still take it before the
/// caller binds it, which callers handle by retrying (see `ControlPlane::start`).
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut rng = rand::rng();
    let mut ports = Vec::with_capacity(count);
    let mut tried = HashSet::new();
    while ports.len() < count {
        if tried.len() > 2000 {
            bail!("no free port on 127.0.0.1 in {PORT_RANGE:?}");
        }
        let port = rng.random_range(PORT_RANGE);
        if !tried.insert(port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A long-running child process whose output goes to a log file.
///
/// Dropping it stops the process (SIGTERM, then SIGKILL after a grace period). A
/// separate watchdog shell stops it too if this process dies without dropping it
/// (SIGKILL, abort), so a killed test run leaves nothing behind for long.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log_path: PathBuf,
}

impl ManagedProcess {
    /// Spawns `command` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        let watchdog = spawn_watchdog(child.id());
        if let Err(error) = &watchdog {
            tracing::warn!(%error, process = name, "no watchdog; it may outlive a killed test");
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            watchdog: watchdog.ok(),
            log_path: log_path.to_owned(),
        })
    }

    /// The name given at spawn time (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file the process writes its output to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Waits until `port` on 127.0.0.1 accepts connections; fails with the log's tail
    /// if the process exits first or `timeout` passes.
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !port_accepts(port) {
            if let Some(status) = self.exited() {
                anyhow::bail!(
                    "{} on port {port} exited ({status}):\n{}",
                    self.name,
                    self.log_tail(10)
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} on port {port} did not accept connections within {timeout:?}:\n{}",
                    self.name,
                    self.log_tail(10)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&mut self) {
        if self.exited().is_none() {
            signal(self.child.id(), "TERM");
        }
    }

    /// Stops the process: SIGTERM, up to `grace` to exit, then SIGKILL; waits for it.
    pub fn stop(&mut self, grace: Duration) {
        self.terminate();
        self.wait_or_kill(Instant::now() + grace);
    }

    /// Waits until `deadline` for the process to exit, then kills it. Also stops the
    /// watchdog, which is no longer needed.
    pub fn wait_or_kill(&mut self, deadline: Instant) {
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.exited().is_none() {
            tracing::warn!(process = %self.name, "did not stop after SIGTERM; killing");
        }
        self.kill();
    }

    /// Kills the process at once (SIGKILL), as a crash would, and waits for it;
    /// stops the watchdog.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Processes that depend on the ones started before them; dropping the group
/// stops them newest first, each given time to shut down while what it depends on
/// still runs (kube-apiserver shuts down slowly once etcd is gone).
#[derive(Debug, Default)]
pub struct ProcessGroup {
    processes: Vec<ManagedProcess>,
}

impl ProcessGroup {
    /// Adds a process started after (and possibly depending on) the others.
    pub fn push(&mut self, process: ManagedProcess) {
        self.processes.push(process);
    }

    /// The processes, oldest first.
    pub fn processes(&self) -> &[ManagedProcess] {
        &self.processes
    }

    /// The process named `name`, if it is in the group.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut ManagedProcess> {
        self.processes.iter_mut().find(|p| p.name() == name)
    }

    /// Takes the process named `name` out of the group (to stop or replace it);
    /// the caller owns it from now on.
    pub fn take(&mut self, name: &str) -> Option<ManagedProcess> {
        let index = self.processes.iter().position(|p| p.name() == name)?;
        Some(self.processes.remove(index))
    }

    /// Puts `process` right after the one named `after` (at the end if there is
    /// none), as if it had been started then: it is stopped before `after`.
    pub fn insert_after(&mut self, after: &str, process: ManagedProcess) {
        let index = self
            .processes
            .iter()
            .position(|p| p.name() == after)
            .map_or(self.processes.len(), |i| i + 1);
        self.processes.insert(index, process);
    }

    /// The first process that has exited, with its exit status.
    pub fn first_exited(&mut self) -> Option<(String, ExitStatus)> {
        self.processes
            .iter_mut()
            .find_map(|p| Some((p.name().to_owned(), p.exited()?)))
    }

    /// Stops every process, newest first.
    pub fn stop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            process.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a shell that stops `child` once this process is gone. `kill -0` on the
/// parent pid tells whether this process is still alive; polling once a second is
/// cheap and needs neither `unsafe` (`prctl`) nor a shared process group.
fn spawn_watchdog(child: u32) -> std::io::Result<Child> {
    let parent = std::process::id();
    let script = format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 1; done; \
         kill -0 {child} 2>/dev/null || exit 0; \
         kill -TERM {child} 2>/dev/null; sleep 3; kill -KILL {child} 2>/dev/null"
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Sends `signal` (a name such as `TERM`) to `pid` with kill(1): std has no safe
/// way to send anything but SIGKILL.
fn signal(pid: u32, signal: &str) {
    let result = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(error) = result {
        tracing::warn!(%error, pid, signal, "could not run kill");
    }
}

/// The last `lines` lines of a log file (reads at most the last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(8).unwrap();
        let distinct: HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 8);
        for port in ports {
            assert!(PORT_RANGE.contains(&port));
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    #[test]
    fn log_tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        assert!(log_tail(&dir.path().join("missing"), 2).contains("no log"));
    }

    #[test]
    fn stop_terminates_a_running_process() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo started; exec sleep 600"]);
        let mut process = ManagedProcess::spawn("sleep", command, &log).unwrap();
        assert!(process.exited().is_none());
        process.stop(Duration::from_secs(5));
        let status = process.exited().expect("process has exited");
        assert!(!status.success());
    }
}
