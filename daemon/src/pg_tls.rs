//! TLS to PostgreSQL as libpq means it: the `sslmode` and `sslrootcert` of a `postgres://` URL
//! turned into the client's settings and a rustls connector (ring, as the API's TLS).
//!
//! The `postgres` crate knows `sslmode` `disable`, `prefer` and `require` only, and no
//! `sslrootcert`; both are taken out of the URL here, and what they ask for is done by the
//! certificate verifier the connector is given:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` (libpq does the same) |
//! | `verify-ca` | always | signed by a root of `sslrootcert` (the system's roots without it) |
//! | `verify-full` | always | as `verify-ca`, and made out to the host the URL names |
//!
//! libpq's `allow` (plain first, TLS on refusal) has no counterpart in the client and is
//! refused; without `sslrootcert`, the verifying modes trust the system's roots rather than
//! libpq's `~/.postgresql/root.crt` (`sslrootcert=system` says so explicitly).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How long a connection may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long sent data may stay unacknowledged before the connection is given up, when the URL
/// does not say (`tcp_user_timeout`): a server cut off by the network fails a handshake or a
/// statement in this time rather than the system's retransmission timeout of many minutes.
const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Keepalive probes on an idle connection, when the URL does not say (`keepalives_idle`,
/// `keepalives_interval`, `keepalives_retries`): a connection waiting for an answer from a
/// server whose machine vanished is given up after about 10 + 3 × 5 seconds, not hours.
const KEEPALIVES_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
const KEEPALIVES_RETRIES: u32 = 3;
/// libpq's `sslmode`, less `allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The value as a URL spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The certificates a server's is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The system's trusted roots (what `openssl` and `curl` trust).
    System,
    /// The certificates of a PEM file (`sslrootcert=FILE`).
    File(PathBuf),
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::System => f.write_str("the system's trusted roots"),
            Roots::File(path) => write!(f, "sslrootcert={}", path.display()),
        }
    }
}

/// How the server's certificate is checked once TLS is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (`prefer`, `require`): encryption without authentication of the server.
    Nothing,
    /// Signed by one of these roots, for any host name (`verify-ca`).
    Chain(Roots),
    /// Signed by one of these roots and made out to the host connected to (`verify-full`).
    ChainAndHost(Roots),
}

/// A PostgreSQL URL taken apart: the client's settings, and what TLS the URL asks for.
#[derive(Clone, Debug)]
pub struct PgTarget {
    config: postgres::Config,
    mode: SslMode,
    verify: Verify,
    /// The client's certificate chain and its key (`sslcert`, `sslkey`), for a server that
    /// authenticates clients by certificate.
    client: Option<ClientCert>,
}

/// PEM files of a client certificate (its chain) and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PgTarget {
    /// Reads a `postgres://` URL; an error says which parameter is wrong and why (never the
    /// URL itself, which may hold a password).
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut mode = SslMode::Prefer;
        let mut root_cert: Option<String> = None;
        let (mut client_cert, mut client_key): (Option<String>, Option<String>) = (None, None);
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key)?.as_str() {
                "sslmode" => {
                    let value = percent_decode(value)?;
                    mode = SslMode::ALL
                        .into_iter()
                        .find(|m| m.as_str() == value)
                        .ok_or_else(|| unknown_mode(&value))?;
                }
                "sslrootcert" => root_cert = Some(percent_decode(value)?),
                "sslcert" => client_cert = Some(percent_decode(value)?),
                "sslkey" => client_key = Some(percent_decode(value)?),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = postgres::Config::from_str(&rest).map_err(|e| with_causes(&e))?;
        // A server that does not answer (cut off, a half-open socket) must not hold a
        // reconnection, and the lease thread with it, for the system's TCP timeout of minutes.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let named = |key: &str| {
            kept.iter()
                .any(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) == key)
        };
        if !named("tcp_user_timeout") {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if !named("keepalives_idle") {
            config.keepalives_idle(KEEPALIVES_IDLE);
        }
        if !named("keepalives_interval") {
            config.keepalives_interval(KEEPALIVES_INTERVAL);
        }
        if !named("keepalives_retries") {
            config.keepalives_retries(KEEPALIVES_RETRIES);
        }
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        let roots = match root_cert.as_deref() {
            None | Some("system") => Roots::System,
            Some("") => return Err("sslrootcert is empty: name a PEM file, or `system`".into()),
            Some(path) => Roots::File(PathBuf::from(path)),
        };
        let client = match (client_cert, client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => Some(ClientCert {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            }),
            (Some(_), None) => {
                return Err(
                    "sslcert needs sslkey too: name the file of the certificate's key".into(),
                );
            }
            (None, Some(_)) => {
                return Err("sslkey needs sslcert too: name the file of the certificate".into());
            }
            _ => return Err("sslcert and sslkey are empty: name PEM files".into()),
        };
        if client.is_some() && mode == SslMode::Disable {
            return Err(
                "sslcert with sslmode=disable: a client certificate needs TLS; use require or a \
                 verifying mode"
                    .into(),
            );
        }
        let verify = match mode {
            SslMode::Disable | SslMode::Prefer => Verify::Nothing,
            // libpq: "if a root CA file exists, sslmode=require behaves as verify-ca".
            SslMode::Require if matches!(roots, Roots::File(_)) => Verify::Chain(roots),
            SslMode::Require => Verify::Nothing,
            SslMode::VerifyCa => Verify::Chain(roots),
            SslMode::VerifyFull => Verify::ChainAndHost(roots),
        };
        Ok(PgTarget {
            config,
            mode,
            verify,
            client,
        })
    }

    /// The `sslmode` the URL asked for (`prefer` when it names none).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// How the server's certificate is checked.
    pub fn verify(&self) -> &Verify {
        &self.verify
    }

    /// Connects (blocking: the store calls it off the runtime's threads). The root
    /// certificates are read at each connection, so that a CA file replaced on disk counts
    /// from the next reconnection.
    pub fn connect(&self) -> Result<postgres::Client, ConnectError> {
        if self.mode == SslMode::Disable {
            return self
                .config
                .connect(postgres::NoTls)
                .map_err(ConnectError::Postgres);
        }
        let tls = MakeRustlsConnect::new(client_config(&self.verify, self.client.as_ref())?);
        self.config.connect(tls).map_err(ConnectError::Postgres)
    }

    /// What a refused certificate was checked against, for an error's message.
    pub fn checked_against(&self) -> Option<String> {
        match &self.verify {
            Verify::Nothing => None,
            Verify::Chain(roots) => Some(format!(
                "sslmode={} checks that one of {roots} signed the server's certificate",
                self.mode
            )),
            Verify::ChainAndHost(roots) => Some(format!(
                "sslmode={} checks that one of {roots} signed the server's certificate and that \
                 it names the host connected to",
                self.mode
            )),
        }
    }
}

fn unknown_mode(value: &str) -> String {
    let known: Vec<&str> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
    if value == "allow" {
        format!(
            "sslmode=allow is not supported: use prefer (TLS when the server offers it) or one \
             of {}",
            known.join(", ")
        )
    } else {
        format!(
            "sslmode={value} is not one of {} (libpq's meanings)",
            known.join(", ")
        )
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The TLS settings could not be made (an unreadable `sslrootcert`, no roots at all).
    Tls(String),
    /// The client failed: the network, the TLS handshake, the server's refusal.
    Postgres(postgres::Error),
}

/// An error with the errors behind it, `a: b: c` (the client's own say only "invalid
/// connection string" or "error performing TLS handshake" and keep the why as their source).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // An I/O error shows the error it wraps and also hands it out as its source.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// `%XX` escapes of a URL's query decoded (`+` stays, as in a URL's query for libpq).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`{}` is not a %XX escape", &s[i..(i + 3).min(s.len())]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

/// ring, as the daemon's API and the client (rustls marks it deprecated for its lack of
/// post-quantum key exchange, which TLS 1.3 with X25519 does without).
fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

fn client_config(
    verify: &Verify,
    client: Option<&ClientCert>,
) -> Result<rustls::ClientConfig, ConnectError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(format!("setting up TLS: {e}")))?;
    let builder = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                roots: None,
                algorithms,
            })),
        Verify::Chain(roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                roots: Some(Arc::new(root_store(roots)?)),
                algorithms,
            })),
        Verify::ChainAndHost(roots) => builder.with_root_certificates(root_store(roots)?),
    };
    let Some(client) = client else {
        return Ok(builder.with_no_client_auth());
    };
    // Read at each connection, as the roots are: a renewed certificate counts from the next.
    let chain = read_pem(&client.cert, "sslcert")?;
    let key = {
        use rustls::pki_types::pem::PemObject;
        let name = || format!("sslkey={}", client.key.display());
        let text = std::fs::read(&client.key)
            .map_err(|e| ConnectError::Tls(format!("{}: {e}", name())))?;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&text)
            .map_err(|e| ConnectError::Tls(format!("{}: {e}", name())))?
    };
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        ConnectError::Tls(format!(
            "sslcert={} with sslkey={}: {e}",
            client.cert.display(),
            client.key.display()
        ))
    })
}

fn root_store(roots: &Roots) -> Result<RootCertStore, ConnectError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::System => {
            // A root the system lists but rustls cannot read is left out, as other clients do.
            store.add_parsable_certificates(system_roots().iter().cloned());
            if store.is_empty() {
                return Err(ConnectError::Tls(
                    "the system has no trusted roots to check the server's certificate against: \
                     name the CA's certificate with sslrootcert=FILE in the URL"
                        .into(),
                ));
            }
        }
        Roots::File(path) => {
            for cert in read_pem(path, "sslrootcert")? {
                store
                    .add(cert)
                    .map_err(|e| ConnectError::Tls(format!("{roots}: {e}")))?;
            }
        }
    }
    Ok(store)
}

/// The certificates of a PEM file; an error names the file as the URL's `param`.
fn read_pem(path: &Path, param: &str) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    use rustls::pki_types::pem::PemObject;
    let name = || format!("{param}={}", path.display());
    let text = std::fs::read(path).map_err(|e| ConnectError::Tls(format!("{}: {e}", name())))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::Tls(format!("{}: {e}", name())))?;
    if certs.is_empty() {
        return Err(ConnectError::Tls(format!(
            "{}: no CERTIFICATE in it",
            name()
        )));
    }
    Ok(certs)
}

/// The system's trusted roots (the distribution's bundle, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`), read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the system's trusted roots for PostgreSQL");
        }
        found.certs
    })
}

/// A verifier that checks the server's certificate chain against `roots` and not the host name
/// (`verify-ca`), or nothing at all when there are no roots (`prefer`, `require`). Either way
/// the handshake's signatures are checked, so the session is with the holder of the key of the
/// certificate shown.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> PgTarget {
        PgTarget::parse(url).unwrap()
    }

    #[test]
    fn sslmode_means_what_it_means_to_libpq() {
        let t = parsed("postgres://u@h/db");
        assert_eq!((t.mode(), t.verify()), (SslMode::Prefer, &Verify::Nothing));
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Prefer);
        let t = parsed("postgres://u@h/db?sslmode=disable");
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Disable);
        let t = parsed("postgres://u@h/db?sslmode=require");
        assert_eq!(t.verify(), &Verify::Nothing);
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Require);
        // A root certificate named makes require check the chain, as libpq does.
        let t = parsed("postgres://u@h/db?sslmode=require&sslrootcert=/etc/ca.pem");
        assert_eq!(
            t.verify(),
            &Verify::Chain(Roots::File("/etc/ca.pem".into()))
        );
        let t = parsed("postgres://u@h/db?sslmode=verify-ca");
        assert_eq!(t.verify(), &Verify::Chain(Roots::System));
        let t = parsed(
            "postgres://u@h:5433/db?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Ftmp%2Fmy%20ca.pem",
        );
        assert_eq!(
            t.verify(),
            &Verify::ChainAndHost(Roots::File("/tmp/my ca.pem".into()))
        );
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Require);
        // The other parameters reach the client.
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        assert_eq!(t.config.get_ports(), &[5433]);
        // Dead peers are noticed in seconds unless the URL says otherwise.
        assert_eq!(t.config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(t.config.get_keepalives_idle(), KEEPALIVES_IDLE);
        let t = parsed("postgres://u@h/db?tcp_user_timeout=30&keepalives_idle=60");
        assert_eq!(
            t.config.get_tcp_user_timeout(),
            Some(&std::time::Duration::from_secs(30))
        );
        assert_eq!(
            t.config.get_keepalives_idle(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            t.config.get_keepalives_interval(),
            Some(KEEPALIVES_INTERVAL)
        );
        let t = parsed("postgres://u@h/db?sslmode=verify-full&sslrootcert=system");
        assert_eq!(t.verify(), &Verify::ChainAndHost(Roots::System));
    }

    #[test]
    fn unknown_modes_and_parameters_are_named() {
        for (query, says) in [
            ("sslmode=allow", "sslmode=allow is not supported"),
            ("sslmode=verify_full", "sslmode=verify_full is not one of"),
            ("sslcrl=/x", "sslcrl"),
            ("sslrootcert=", "sslrootcert is empty"),
            ("sslrootcert=%2", "`%2` is not a %XX escape"),
            ("sslcert=/c.pem", "sslcert needs sslkey too"),
            ("sslkey=/k.pem", "sslkey needs sslcert too"),
            (
                "sslmode=disable&sslcert=/c.pem&sslkey=/k.pem",
                "a client certificate needs TLS",
            ),
        ] {
            let e = PgTarget::parse(&format!("postgres://u:s3cret@h/db?{query}")).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
            assert!(!e.contains("s3cret"), "{query}: a password leaked: {e}");
        }
    }

    #[test]
    fn an_unreadable_root_file_is_named() {
        let t = parsed(
            "postgres://u@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        );
        match t.connect() {
            Err(ConnectError::Tls(e)) => {
                assert!(e.contains("sslrootcert=/nonexistent/ca.pem"), "{e}")
            }
            Err(ConnectError::Postgres(e)) => panic!("connected before reading the roots: {e}"),
            Ok(_) => panic!("connected to port 1"),
        }
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let t = parsed(&format!(
            "postgres://u@127.0.0.1:1/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ));
        match t.connect() {
            Err(ConnectError::Tls(e)) => assert!(e.contains("no CERTIFICATE"), "{e}"),
            _ => panic!("a file without certificates was taken"),
        }
    }
}
