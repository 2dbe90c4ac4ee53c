//! Telling the app its files changed: what a pod may ask for in its
//! annotations, checked once by the webhook (which refuses the pod) and
//! again by the sidecar (which refuses to start), with the same rules.
//!
//! - [`SIGNAL_ANNOTATION`] with [`PROCESS_ANNOTATION`]: after each
//!   renewal's files are in place, the sidecar sends that signal to every
//!   process of that name it can see (the pod shares one process namespace,
//!   and the sidecar runs as the app's user).
//! - [`URL_ANNOTATION`]: the sidecar POSTs to that `http://` URL on the
//!   pod's loopback interface instead (or as well).
//!
//! Errors say what is wrong without quoting the value (the caller quotes
//! it, bounded, where it may).

/// The signal to send, such as `HUP` or `SIGUSR1`: one of [`SIGNALS`].
pub const SIGNAL_ANNOTATION: &str = "ferry.dev/reload-signal";

/// The name of the process to signal, as `/proc/<pid>/comm` shows it (at
/// most 15 bytes: the kernel truncates longer names).
pub const PROCESS_ANNOTATION: &str = "ferry.dev/reload-process";

/// A loopback `http://` URL to POST to.
pub const URL_ANNOTATION: &str = "ferry.dev/reload-url";

/// The signals a reload may send (without the `SIG` prefix), the ones apps
/// use to reload or reopen: never KILL or STOP, which no app can handle.
pub const SIGNALS: [&str; 7] = ["HUP", "USR1", "USR2", "INT", "QUIT", "TERM", "WINCH"];

/// The longest process name the kernel keeps in `comm`.
pub const MAX_PROCESS_NAME: usize = 15;

/// The canonical name (`SIGHUP`) of a signal written `HUP`, `SIGHUP` or in
/// lower case, if it is one of [`SIGNALS`].
pub fn parse_signal(value: &str) -> Result<String, String> {
    let upper = value.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&bare) {
        Ok(format!("SIG{bare}"))
    } else {
        Err(format!(
            "is not a signal a reload may send: one of {}",
            SIGNALS.join(", ")
        ))
    }
}

/// Checks a process name: 1 to [`MAX_PROCESS_NAME`] printable bytes, no
/// `/` (a name, not a path).
pub fn check_process_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_PROCESS_NAME {
        return Err(format!(
            "is not a process name: 1 to {MAX_PROCESS_NAME} bytes, as /proc/<pid>/comm shows it"
        ));
    }
    if value.contains('/') || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(
            "is not a process name: printable, without '/' (the name, not the path)".into(),
        );
    }
    Ok(())
}

/// A loopback `http://` URL, split for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopbackUrl {
    /// `127.0.0.1` (any of 127.0.0.0/8), `::1` or `localhost`.
    pub host: String,
    /// The port (80 unless given).
    pub port: u16,
    /// The path and query, `/` at least.
    pub path: String,
}

/// Parses `http://<loopback host>[:port][/path]`. Only the pod's own
/// loopback interface: a reload must never become a request to anywhere
/// else from inside the pod (the sidecar is not a proxy for the pod's
/// author), and `https://` would need a trust store for a local call.
pub fn parse_loopback_url(value: &str) -> Result<LoopbackUrl, String> {
    let refuse = |why: &str| Err(why.to_owned());
    let Some(rest) = value.strip_prefix("http://") else {
        return refuse("must be an http:// URL on the pod's loopback interface");
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if path.contains('#') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("has a fragment or a character a request line cannot carry");
    }
    if authority.contains('@') {
        return refuse("must not carry a user name or password");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, after)) => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return refuse("is not host[:port]"),
            },
            None => return refuse("has an unclosed IPv6 bracket"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if !is_loopback(host) {
        return refuse(
            "is not on the pod's loopback interface: the host must be localhost, 127.x.y.z or [::1]",
        );
    }
    let port = match port {
        None => 80,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return refuse("has an invalid port"),
        },
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok(LoopbackUrl {
        host: host.to_owned(),
        port,
        path,
    })
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host == "::1" {
        return true;
    }
    let octets: Vec<&str> = host.split('.').collect();
    octets.len() == 4
        && octets[0] == "127"
        && octets
            .iter()
            .all(|octet| !octet.is_empty() && octet.len() <= 3 && octet.parse::<u8>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_with_or_without_sig_in_any_case() {
        assert_eq!(parse_signal("HUP").unwrap(), "SIGHUP");
        assert_eq!(parse_signal("sigusr1").unwrap(), "SIGUSR1");
        for refused in ["KILL", "SIGSTOP", "9", "", "HUPX"] {
            assert!(parse_signal(refused).is_err(), "{refused}");
        }
        assert!(parse_signal("KILL").unwrap_err().contains("HUP, USR1"));
    }

    #[test]
    fn process_names_are_comm_names() {
        assert!(check_process_name("nginx").is_ok());
        assert!(check_process_name("envoy-proxy-123").is_ok());
        for refused in ["", "/usr/sbin/nginx", "a-name-longer-than-15", "tab\there"] {
            assert!(check_process_name(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn only_loopback_http_urls_are_accepted() {
        assert_eq!(
            parse_loopback_url("http://127.0.0.1:8080/-/reload").unwrap(),
            LoopbackUrl {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/-/reload".into()
            }
        );
        assert_eq!(parse_loopback_url("http://localhost").unwrap().path, "/");
        assert_eq!(
            parse_loopback_url("http://[::1]:9000?x=1").unwrap().port,
            9000
        );
        assert_eq!(
            parse_loopback_url("http://[::1]:9000?x=1").unwrap().path,
            "/?x=1"
        );
        for refused in [
            "https://127.0.0.1/reload",
            "http://10.0.0.1/reload",
            "http://example.com/reload",
            "http://127.0.0.1.example.com/",
            "http://user:pw@127.0.0.1/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1/a b",
            "http://[::2]/",
            "http://127.1/",
        ] {
            assert!(parse_loopback_url(refused).is_err(), "{refused}");
        }
    }
}
