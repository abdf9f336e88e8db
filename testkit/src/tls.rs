//! TLS for tests: a private CA made with `openssl` ([`private_ca`]) and a real HTTPS server of
//! static files ([`HttpsFiles`]), on the TLS stack berth itself uses (rustls with ring).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::find_program;

/// `openssl ARGS` run in `dir`, failing the test with its stderr when it fails; `None` when
/// `openssl` is not installed.
fn openssl_in(dir: &Path) -> Option<impl Fn(&[&str]) + '_> {
    let openssl = find_program("openssl")?;
    Some(move |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

/// A private CA and a certificate it signed for 127.0.0.1 and `localhost`, made with `openssl`
/// in `dir`: (CA certificate, server certificate, server key), or `None` when `openssl` is not
/// installed (the caller skips with [`crate::skip_or_fail`]).
pub fn private_ca(dir: &Path) -> Option<[PathBuf; 3]> {
    let run = openssl_in(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-days", "2", "-subj", "/CN=berth test CA"],
        &["-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "srv.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "cert.pem",
        "-extfile",
        "ext",
    ]);
    Some(["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f)))
}

/// A client certificate for `user` (its common name), signed by the CA that [`private_ca`]
/// made in `dir`: (certificate, key), or `None` when `openssl` is not installed.
pub fn client_cert(dir: &Path, user: &str) -> Option<[PathBuf; 2]> {
    let run = openssl_in(dir)?;
    let subject = format!("/CN={user}");
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &subject,
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
    ]);
    // Extensions make it a version 3 certificate, which TLS libraries insist on.
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-extfile",
        "client.ext",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "client.pem",
    ]);
    Some(["client.pem", "client.key"].map(|f| dir.join(f)))
}

/// An HTTPS server on 127.0.0.1 that serves the files of a directory (`GET` and `HEAD`, with
/// `Content-Length`, one request per connection), presenting a given certificate. It stops when
/// dropped.
pub struct HttpsFiles {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpsFiles {
    /// Serves `root` with the certificate chain `cert` and its key `key` (PEM).
    pub fn start(root: &Path, cert: &Path, key: &Path) -> HttpsFiles {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        // ring, as berth's own TLS.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, served, root) = (stop.clone(), served.clone(), root.to_owned());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (config, root, served) = (config.clone(), root.clone(), served.clone());
                    std::thread::spawn(move || {
                        // A client that refuses the certificate ends the handshake: not the
                        // server's failure.
                        if answer(stream, config, &root).is_ok() {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
            })
        };
        HttpsFiles {
            port,
            stop,
            served,
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// How many requests it answered (after a TLS handshake that succeeded).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for HttpsFiles {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `tcp`: the file it names under `root`, or 404.
fn answer(tcp: TcpStream, config: Arc<rustls::ServerConfig>, root: &Path) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
    }
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let file = path.trim_start_matches('/');
    let body = if file.split('/').any(|part| part == ".." || part.is_empty()) {
        None
    } else {
        std::fs::read(root.join(file)).ok()
    };
    match body {
        Some(body) => {
            write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if method == "GET" {
                tls.write_all(&body)?;
            }
        }
        None => write!(
            tls,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    tls.conn.send_close_notify();
    tls.flush()
}
