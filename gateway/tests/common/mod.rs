//! Runs the real `moltbot-gateway` binary for process-level tests and the bench.
#![allow(dead_code)] // each test binary uses its own part of this kit

pub mod load;
pub mod stream;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-inbox-token-0123456789";

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_moltbot-gateway"))
}

/// A port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Writes a config for a gateway with its data in `dir`; `extra` is appended YAML.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    let yaml = format!(
        "tenant:\n  id: test\nlisten: 127.0.0.1:0\ndata_dir: {}\nauth:\n  inbox_token: {TOKEN}\nlog:\n  level: info\n  format: json\n{extra}",
        dir.join("data").display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts the binary on `config` at a free port and returns once `/readyz` answers 200,
    /// with the time that took.
    pub fn start(config: &Path) -> (Gateway, Duration) {
        Self::start_with_env(config, &[])
    }

    /// [`Gateway::start`] with these variables added to the binary's environment.
    pub fn start_with_env(config: &Path, env: &[(&str, &Path)]) -> (Gateway, Duration) {
        let addr = free_addr();
        let log = config.with_extension(format!("{}.log", addr.port()));
        let out = std::fs::File::create(&log).unwrap();
        let started = Instant::now();
        let child = Command::new(binary())
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .envs(env.iter().copied())
            .spawn()
            .expect("start moltbot-gateway");
        let mut gateway = Gateway {
            child,
            addr,
            config: config.to_path_buf(),
            log,
        };
        let ready = Ready {
            path: "/readyz",
            within: Duration::from_secs(20),
            every: Duration::from_millis(1),
        };
        ready.wait(&mut gateway.child, addr, &gateway.log);
        (gateway, started.elapsed())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Waits for the process to exit (at most `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "gateway still running after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// CPU time (user + system) the gateway has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.child.id())
    }
}

/// CPU time (user and system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When a process started on `addr` counts as ready: `path` answers 200.
pub struct Ready {
    pub path: &'static str,
    /// How long it may take.
    pub within: Duration,
    /// How often to ask.
    pub every: Duration,
}

impl Ready {
    /// Returns once `child` is ready; panics with its `log` should it exit or take too long.
    pub fn wait(&self, child: &mut Child, addr: SocketAddr, log: &Path) {
        let started = Instant::now();
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        while http_status(addr, "GET", self.path) != Some(200) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("exited with {status} before ready:\n{}", log_text());
            }
            assert!(
                started.elapsed() < self.within,
                "not ready after {:?}:\n{}",
                self.within,
                log_text()
            );
            std::thread::sleep(self.every);
        }
    }
}

/// The status of a bodiless request, or None when nothing answers.
pub fn http_status(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The JSON body of one web-chat message: session `s{n % sessions}`, client id `m{n}`.
pub fn webchat_body(n: u64, sessions: u64) -> String {
    format!(
        r#"{{"client_message_id":"m{n}","session":"s{}","sender":{{"id":"person-{}"}},"text":"load message number {n}"}}"#,
        n % sessions,
        n % sessions
    )
}
