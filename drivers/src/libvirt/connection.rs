//! The connection to one host's libvirt: the URI berth opens (never one that could prompt),
//! kept open for the driver's lifetime and opened again when libvirt reports it dead.

use std::sync::{Arc, Mutex};

use virt::connect::Connect;

use crate::DriverError;

/// One host's libvirt connection: opened on first use, kept, and opened again after libvirt
/// reported it dead.
pub(super) struct Connection {
    /// The host's name in berth, for errors.
    host: String,
    /// The URI as configured (what errors name); [`connect_uri`] says what is opened.
    uri: String,
    /// The open connection; `None` before the first call and after libvirt reported it dead.
    open: Mutex<Option<Arc<Connect>>>,
}

impl Connection {
    /// A connection to `uri` for host `host`; nothing is opened until [`Self::get`].
    pub(super) fn new(host: &str, uri: &str) -> Connection {
        Connection {
            host: host.to_owned(),
            uri: uri.to_owned(),
            open: Mutex::new(None),
        }
    }

    /// The open connection, opened now if there is none or libvirt says it is dead.
    pub(super) fn get(&self) -> Result<Arc<Connect>, DriverError> {
        // A panic while holding the lock leaves at worst a stale connection, which is_alive
        // catches below.
        let mut slot = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = slot.as_ref()
            && conn.is_alive().unwrap_or(false)
        {
            return Ok(conn.clone());
        }
        let uri = &self.uri;
        let conn = Connect::open(Some(&connect_uri(uri))).map_err(|e| {
            // ssh's warnings come as a banner of lines: one line reads better in a log.
            let why = e
                .message()
                .lines()
                .map(|l| l.trim_matches(|c: char| c == '@' || c.is_whitespace()))
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let message = if why.to_ascii_lowercase().contains("host key") {
                format!(
                    "libvirt at {uri}: the SSH host key of {} was not accepted: {why} (berth \
                     never accepts an unknown or changed key: check it, then put it in the \
                     known_hosts file this connection uses)",
                    uri_host(uri).unwrap_or("the host")
                )
            } else {
                format!(
                    "libvirt unreachable at {uri}: {why} (is libvirtd running there, and for \
                     qemu+ssh can this user log in to the host?)"
                )
            };
            DriverError::Host {
                host: self.host.clone(),
                message,
            }
        })?;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection, so that the next call opens a new one.
    pub(super) fn forget(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The host part of a libvirt URI (`qemu+ssh://user@host:22/system` gives `host`), or `None`
/// for a local URI.
pub fn uri_host(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    (!host.is_empty()).then_some(host)
}

/// The URI to open: `uri`, with `no_tty=1` added to one that runs the `ssh` command and does
/// not say, so that ssh runs in batch mode and a daemon never waits at a password, passphrase
/// or host-key prompt. The libssh and libssh2 transports never prompt without a callback.
fn connect_uri(uri: &str) -> std::borrow::Cow<'_, str> {
    let scheme = uri.split_once("://").map_or("", |(scheme, _)| scheme);
    let query = uri.split_once('?').map(|(_, q)| q);
    let says = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("no_tty=")));
    if !scheme.ends_with("+ssh") || says {
        return uri.into();
    }
    let sep = if query.is_some() { '&' } else { '?' };
    format!("{uri}{sep}no_tty=1").into()
}

/// Whether files on the host are files here (no host in the URI).
pub(super) fn uri_is_local(uri: &str) -> bool {
    uri_host(uri).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_hosts() {
        assert_eq!(uri_host("qemu:///system"), None);
        assert_eq!(uri_host("test:///default"), None);
        assert_eq!(
            uri_host("qemu+ssh://ci@kvm7.example/system"),
            Some("kvm7.example")
        );
        assert_eq!(uri_host("qemu+tcp://kvm7:16509/system"), Some("kvm7"));
        assert_eq!(
            uri_host("qemu+ssh://[2001:db8::1]/system"),
            Some("2001:db8::1")
        );
        assert_eq!(uri_host("qemu+unix:///system?socket=/x"), None);
    }

    #[test]
    fn ssh_uris_never_prompt() {
        assert_eq!(
            connect_uri("qemu+ssh://ci@kvm7/system"),
            "qemu+ssh://ci@kvm7/system?no_tty=1"
        );
        assert_eq!(
            connect_uri("qemu+ssh://ci@kvm7:2222/system?keyfile=/k"),
            "qemu+ssh://ci@kvm7:2222/system?keyfile=/k&no_tty=1"
        );
        // What the operator wrote stands.
        assert_eq!(
            connect_uri("qemu+ssh://kvm7/system?no_tty=0"),
            "qemu+ssh://kvm7/system?no_tty=0"
        );
        for uri in [
            "qemu:///system",
            "qemu+libssh2://kvm7/system?known_hosts=/k",
            "test:///default",
        ] {
            assert_eq!(connect_uri(uri), uri);
        }
    }
}
