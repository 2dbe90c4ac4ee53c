//! Tells the app that a renewal changed its files, as its pod asked (see
//! [`ferry_contract::reload`]): a signal to every process of a given name
//! the sidecar can see (the pod shares one process namespace and the
//! sidecar runs as the app's user), and/or a POST to a loopback URL. It is
//! called once per atomic swap, after the new generation is in place, on a
//! thread of its own; a failure is logged and counted, never fatal: the
//! files are current whether or not the app heard of it.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_contract::reload::LoopbackUrl;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::config::ReloadConfig;
use crate::log;

/// How long a reload request may take, connection included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of an answer read: the status line is all that counts.
const MAX_ANSWER_BYTES: u64 = 4096;

/// Sends reloads and counts the ones that failed.
#[derive(Debug)]
pub struct Reloader {
    signal: Option<(Signal, String)>,
    url: Option<LoopbackUrl>,
    failures: AtomicU64,
}

impl Reloader {
    /// The reloader `config` asks for; `None` when it asks for none.
    pub fn new(config: &ReloadConfig) -> Option<Self> {
        if !config.is_set() {
            return None;
        }
        let signal = config.signal.as_ref().and_then(|(name, process)| {
            // The configuration checked the name against the allowed ones.
            Signal::from_str(name)
                .ok()
                .map(|signal| (signal, process.clone()))
        });
        Some(Self {
            signal,
            url: config.url.clone(),
            failures: AtomicU64::new(0),
        })
    }

    /// Tells the app that `secret`'s files were swapped; logs what was done.
    pub fn reload(&self, secret: &str) {
        if let Some((signal, process)) = &self.signal {
            match signal_processes(*signal, process) {
                Ok(0) => self.failed(
                    secret,
                    "signal",
                    &format!(
                        "no process named {process:?} that the sidecar may signal: the pod needs \
                         shareProcessNamespace and the app running as the sidecar's user"
                    ),
                ),
                Ok(count) => log::info(
                    "reload_signalled",
                    json!({
                        "secret": secret,
                        "signal": signal.as_str(),
                        "process": process,
                        "processes": count,
                    }),
                ),
                Err(error) => self.failed(secret, "signal", &error),
            }
        }
        if let Some(url) = &self.url {
            match post(url) {
                Ok(status) if (200..300).contains(&status) => log::info(
                    "reload_requested",
                    json!({ "secret": secret, "url": display(url), "status": status }),
                ),
                Ok(status) => self.failed(
                    secret,
                    "http",
                    &format!("{} answered {status}", display(url)),
                ),
                Err(error) => self.failed(secret, "http", &format!("{}: {error}", display(url))),
            }
        }
    }

    fn failed(&self, secret: &str, how: &str, error: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        log::warn(
            "reload_failed",
            json!({
                "secret": secret,
                "how": how,
                "error": error,
                "failures_total": failures,
            }),
        );
    }
}

/// Sends `signal` to every other process named `name` in `/proc`; how many
/// got it. Processes of other users (EPERM) and ones that just exited are
/// passed over.
fn signal_processes(signal: Signal, name: &str) -> Result<usize, String> {
    let me = std::process::id();
    let entries = std::fs::read_dir("/proc").map_err(|error| format!("reading /proc: {error}"))?;
    let mut signalled = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end_matches('\n') != name {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match kill(Pid::from_raw(raw), signal) {
            Ok(()) => signalled += 1,
            Err(Errno::EPERM | Errno::ESRCH) => {}
            Err(error) => return Err(format!("signalling process {pid}: {error}")),
        }
    }
    Ok(signalled)
}

/// POSTs nothing to `url`; the answer's status.
fn post(url: &LoopbackUrl) -> Result<u16, String> {
    // No resolver: `localhost` is the one name a loopback URL may use.
    let ip: IpAddr = if url.host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        url.host
            .parse()
            .map_err(|_| format!("{:?} is not an IP address", url.host))?
    };
    let address = SocketAddr::new(ip, url.port);
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)
        .map_err(|error| format!("cannot connect: {}", error.kind()))?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|error| error.to_string())?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferry-sidecar/{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        url.path,
        host_header(url),
        env!("CARGO_PKG_VERSION"),
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("sending: {}", error.kind()))?;
    let mut answer = Vec::new();
    let _ = stream.take(MAX_ANSWER_BYTES).read_to_end(&mut answer);
    status_of(&answer).ok_or_else(|| "did not answer with an HTTP status line".to_owned())
}

/// The status code of an HTTP/1.x answer's status line.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts
        .next()
        .filter(|version| version.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

fn host_header(url: &LoopbackUrl) -> String {
    if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    }
}

fn display(url: &LoopbackUrl) -> String {
    format!("http://{}{}", host_header(url), url.path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_status_line_gives_its_code() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 500 Oops\r\n"), Some(500));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b""), None);
    }

    #[test]
    fn a_post_reaches_a_loopback_listener_and_reads_its_status() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let read = stream.read(&mut request).unwrap();
            stream
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&request[..read]).into_owned()
        });
        let url = ferry_contract::reload::parse_loopback_url(&format!(
            "http://127.0.0.1:{port}/-/reload"
        ))
        .unwrap();
        assert_eq!(post(&url), Ok(202));
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /-/reload HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("Host: 127.0.0.1:{port}\r\n")));
    }

    #[test]
    fn nothing_listening_is_an_error_that_says_so() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = ferry_contract::reload::parse_loopback_url(&format!("http://127.0.0.1:{port}/"))
            .unwrap();
        assert!(post(&url).unwrap_err().contains("cannot connect"));
    }

    #[test]
    fn a_signal_goes_to_processes_of_that_name_only() {
        // A child named as nothing else on this machine: `sleep` run
        // through a symlink, whose name becomes the process's comm.
        let dir = tempfile::tempdir().unwrap();
        let name = format!("ferry-t{}", std::process::id() % 100_000);
        let link = dir.path().join(&name);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut child = std::process::Command::new(&link).arg("30").spawn().unwrap();
        assert_eq!(signal_processes(Signal::SIGTERM, &name), Ok(1));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(Signal::SIGTERM as i32)
        );
        assert_eq!(signal_processes(Signal::SIGHUP, "no-such-process"), Ok(0));
    }
}
