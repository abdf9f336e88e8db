//! Reaching a VM's graphical console: the `ssh -L` hint for SSH sessions, OSC 52 clipboard
//! copies, and finding a local VNC viewer.

use std::path::{Path, PathBuf};

use crate::model::ConsoleInfo;

/// The SSH session the console runs in, from `SSH_CONNECTION` (`client port server port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshEnv {
    /// The address the operator reached this machine at.
    pub server: String,
    pub port: u16,
    pub user: Option<String>,
}

impl SshEnv {
    /// Reads the session from the environment; `None` outside SSH.
    pub fn detect() -> Option<SshEnv> {
        let conn = std::env::var("SSH_CONNECTION").ok();
        let tty = std::env::var("SSH_TTY").ok();
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
        SshEnv::from_vars(conn.as_deref(), tty.as_deref(), user)
    }

    pub fn from_vars(
        connection: Option<&str>,
        tty: Option<&str>,
        user: Option<String>,
    ) -> Option<SshEnv> {
        let parts: Vec<&str> = connection.unwrap_or("").split_whitespace().collect();
        match parts.as_slice() {
            [_, _, server, port] => Some(SshEnv {
                server: (*server).to_owned(),
                port: port.parse().unwrap_or(22),
                user,
            }),
            // SSH_TTY alone: we are in SSH but do not know the address.
            _ if tty.is_some_and(|t| !t.is_empty()) => Some(SshEnv {
                server: "THIS-HOST".into(),
                port: 22,
                user,
            }),
            _ => None,
        }
    }
}

/// The exact command to run on the operator's own machine, and the address to open there.
pub fn ssh_hint(ssh: &SshEnv, info: &ConsoleInfo) -> (String, String) {
    let local_port = info.port;
    let dest = match &ssh.user {
        Some(u) => format!("{u}@{}", bracket(&ssh.server)),
        None => bracket(&ssh.server),
    };
    let port = if ssh.port == 22 {
        String::new()
    } else {
        format!(" -p {}", ssh.port)
    };
    let cmd = format!(
        "ssh -N -L {local_port}:{}:{}{port} {dest}",
        bracket(&info.host),
        info.port
    );
    (cmd, format!("vnc://localhost:{local_port}"))
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The escape sequence that asks the terminal to put `text` on the clipboard (OSC 52).
pub fn osc52(text: &str) -> String {
    format!("\x1b]52;c;{}\x07", base64(text.as_bytes()))
}

/// Standard base64 with padding (the alphabet OSC 52 expects).
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A viewer program and its arguments for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// `$BERTH_VNC_VIEWER` (given `vnc://host:port`), else `vncviewer` (`host::port`), else
/// `remote-viewer` (`vnc://host:port`) from `path`.
pub fn find_viewer(
    env_viewer: Option<&str>,
    path: Option<&str>,
    host: &str,
    port: u16,
) -> Option<ViewerCommand> {
    let url = format!("vnc://{}:{port}", bracket(host));
    if let Some(v) = env_viewer.map(str::trim).filter(|v| !v.is_empty()) {
        let mut words = v.split_whitespace();
        let program = PathBuf::from(words.next()?);
        let mut args: Vec<String> = words.map(str::to_owned).collect();
        args.push(url);
        return Some(ViewerCommand { program, args });
    }
    let dirs: Vec<&Path> = path.unwrap_or("").split(':').map(Path::new).collect();
    let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    if let Some(p) = find("vncviewer") {
        return Some(ViewerCommand {
            program: p,
            args: vec![format!("{}::{port}", bracket(host))],
        });
    }
    find("remote-viewer").map(|p| ViewerCommand {
        program: p,
        args: vec![url],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConsoleInfo {
        ConsoleInfo {
            vm: 12,
            host: "10.0.0.5".into(),
            port: 5912,
            password: None,
        }
    }

    #[test]
    fn the_ssh_hint_forwards_to_the_vm_host_through_this_machine() {
        let ssh = SshEnv::from_vars(
            Some("192.168.1.9 50122 203.0.113.4 22"),
            None,
            Some("ops".into()),
        )
        .unwrap();
        let (cmd, url) = ssh_hint(&ssh, &info());
        assert_eq!(cmd, "ssh -N -L 5912:10.0.0.5:5912 ops@203.0.113.4");
        assert_eq!(url, "vnc://localhost:5912");
        let ssh = SshEnv::from_vars(Some("::1 5 ::1 2222"), None, None).unwrap();
        assert_eq!(
            ssh_hint(&ssh, &info()).0,
            "ssh -N -L 5912:10.0.0.5:5912 -p 2222 [::1]"
        );
        assert_eq!(SshEnv::from_vars(None, None, None), None);
        assert!(SshEnv::from_vars(None, Some("/dev/pts/1"), None).is_some());
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(osc52("foo"), "\x1b]52;c;Zm9v\x07");
    }

    #[test]
    fn the_viewer_comes_from_the_environment_first() {
        let v = find_viewer(Some("open -a VNC"), None, "h", 5900).unwrap();
        assert_eq!(v.program, PathBuf::from("open"));
        assert_eq!(v.args, ["-a", "VNC", "vnc://h:5900"]);
        assert_eq!(find_viewer(None, Some("/nonexistent"), "h", 1), None);
    }
}
