//! The exit codes of `berth`, as README's table documents them, and the one place that maps an
//! error to its code. Scripts and CI coordinators read these, so each stays what it is.

use std::process::ExitCode;

/// Done as asked.
pub const OK: u8 = 0;
/// Any other error: bad input file, a failure on the way.
pub const ERROR: u8 = 1;
/// The command line was wrong (clap's own errors use it too).
pub const USAGE: u8 = 2;
/// A request the command submitted or waited for was rejected, failed or cancelled.
pub const REQUEST_ENDED: u8 = 3;
/// `--wait` gave up: the VMs were not running within `--timeout`.
pub const WAIT_TIMEOUT: u8 = 4;
/// The daemon could not be reached, or said it cannot serve now (a 503: no daemon leads
/// during a takeover, or the daemon is shutting down): worth retrying.
pub const UNREACHABLE: u8 = 5;
/// The daemon refused the call (a 4xx answer: bad input, no such thing, no permission).
pub const REFUSED: u8 = 6;
/// Standard output was closed early (`berth vm list | head`): ended quietly, as a process
/// killed by SIGPIPE would be (128 + 13).
pub const CLOSED_PIPE: u8 = 141;

/// An error that chooses its exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// A mistake on the command line that clap could not see.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: USAGE,
        message: message.into(),
    })
}

/// The exit code an error ends the process with: the first cause in its chain that says.
pub fn code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return exit.code;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return CLOSED_PIPE;
        }
        if let Some(c) = cause.downcast_ref::<berth_client::ClientError>() {
            return match c {
                berth_client::ClientError::Unreachable { .. } => UNREACHABLE,
                berth_client::ClientError::Status { status: 503, .. } => UNREACHABLE,
                berth_client::ClientError::Status { status, .. } if (400..500).contains(status) => {
                    REFUSED
                }
                _ => ERROR,
            };
        }
    }
    ERROR
}

/// Ends with the error's code, saying what went wrong on stderr (nothing for a closed pipe:
/// the reader has gone, and `head` does not want to hear about it).
pub fn report(e: &anyhow::Error) -> ExitCode {
    let code = code_of(e);
    if code != CLOSED_PIPE {
        eprintln!("berth: {}", said(e));
    }
    ExitCode::from(code)
}

/// The error and its causes, `a: b: c`, each cause once: many errors write the one they wrap
/// into their own message and also hand it out as their source, which `{e:#}` would print a
/// second time.
fn said(e: &anyhow::Error) -> String {
    berth_daemon::pg_tls::with_causes(e.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_cause_its_error_already_tells_is_said_once() {
        #[derive(Debug)]
        struct Wraps(std::io::Error);
        impl std::fmt::Display for Wraps {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "reading the key: {}", self.0)
            }
        }
        impl std::error::Error for Wraps {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Wraps(std::io::Error::other("no such file")))
            .context("starting the daemon");
        assert_eq!(
            said(&e),
            "starting the daemon: reading the key: no such file"
        );
    }

    #[test]
    fn errors_map_to_their_codes_through_context() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = Err::<(), _>(pipe).context("writing").unwrap_err();
        assert_eq!(code_of(&e), CLOSED_PIPE);
        assert_eq!(code_of(&usage("bad flag")), USAGE);
        let refused = anyhow::Error::new(berth_client::ClientError::Status {
            route: "GET /v1/vms".into(),
            status: 404,
            error: "no".into(),
            field: None,
        });
        assert_eq!(code_of(&refused), REFUSED);
        let broken = anyhow::Error::new(berth_client::ClientError::Status {
            route: "GET /v1/vms".into(),
            status: 500,
            error: "no".into(),
            field: None,
        });
        assert_eq!(code_of(&broken), ERROR);
        let away = anyhow::Error::new(berth_client::ClientError::Unreachable {
            url: "http://x".into(),
            message: "refused".into(),
        })
        .context("listing vms");
        assert_eq!(code_of(&away), UNREACHABLE);
        assert_eq!(code_of(&anyhow::anyhow!("other")), ERROR);
    }
}
