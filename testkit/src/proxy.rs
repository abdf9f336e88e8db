//! A TCP proxy on loopback that a test can freeze: it stops passing bytes either way and
//! leaves new connections unanswered, as a network partition does (nothing is refused or
//! closed; the peers just hear nothing), and thaws again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a frozen pump looks whether it may go on.
const FROZEN_POLL: Duration = Duration::from_millis(10);

/// Forwards `127.0.0.1:port()` to a target address, until dropped.
pub struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `target` (`127.0.0.1:5432`).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (target, f, st) = (target.to_owned(), frozen.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (target, f, st) = (target.clone(), f.clone(), st.clone());
                std::thread::spawn(move || {
                    // A connection made while frozen waits, unanswered, for the thaw.
                    while f.load(Ordering::Acquire) && !st.load(Ordering::Acquire) {
                        std::thread::sleep(FROZEN_POLL);
                    }
                    let Ok(server) = TcpStream::connect(&target) else {
                        return;
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (f2, st2) = (f.clone(), st.clone());
                    std::thread::spawn(move || pump(c2, s2, &f2, &st2));
                    pump(server, client, &f, &st);
                });
            }
        });
        Proxy { port, frozen, stop }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops passing bytes: reads wait, writes of the peers fill the buffers.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` while not frozen, until either side closes or the proxy stops.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(FROZEN_POLL));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        if frozen.load(Ordering::Acquire) {
            std::thread::sleep(FROZEN_POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
