//! Base images that travel to the hosts that need them: an image store (a directory, which may
//! be a network mount, or an `http://` or `https://` URL) holds each base image beside its
//! SHA-256 digest, and a board of pulls keeps one pull per image per host at a time and says how
//! far each has come.
//!
//! In a store, base image file `linux.qcow2` comes with `linux.qcow2.sha256`, whose first word is
//! the image's SHA-256 digest in hex (what `sha256sum linux.qcow2 > linux.qcow2.sha256` writes).
//! A driver that pulls an image reads it through [`ImageSource`], which hashes what it hands
//! out; [`ImageSource::verify`] then says whether the bytes were the image the digest names.
//!
//! The same board keeps what each host's driver last found in its image directory
//! ([`Holdings`]: each image's size, last use and whether it is in use, and the host's budget),
//! so the daemon can show it without asking the host on every read.
//!
//! An `https://` store is verified against the system's trusted roots and, when the store names
//! one (`image_store_ca`), the CA certificates of a PEM file: a private CA needs no change to
//! the system's trust. A certificate the roots do not vouch for fails the pull with an error that
//! names the store and why.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest as _, Sha256};

/// The extension of a base image's file in a store and on libvirt hosts: image `linux` is
/// `linux.qcow2`.
pub const IMAGE_FILE_EXT: &str = ".qcow2";

/// The suffix of the digest file beside each image in a store.
pub const DIGEST_SUFFIX: &str = ".sha256";

/// Where base images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageStore {
    /// A directory on the machine the daemon runs on (a network mount works).
    Dir(PathBuf),
    /// An HTTP server: `URL/linux.qcow2` and `URL/linux.qcow2.sha256`.
    Http(String),
    /// An HTTPS server, laid out as an HTTP one, whose certificate the system's trusted roots
    /// or the CA certificates in `ca_file` (PEM) vouch for.
    Https {
        url: String,
        ca_file: Option<PathBuf>,
    },
}

/// The name of the setting that gives an `https://` store's CA file, in the daemon's
/// `[drivers]` section and in a host's options alike.
pub const CA_FILE_OPTION: &str = "image_store_ca";

/// Something wrong with an image store or an image in it, naming which.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("image store {store}: {message}")]
pub struct ImageError {
    pub store: String,
    pub message: String,
}

impl std::str::FromStr for ImageStore {
    type Err = ImageError;

    /// `/srv/images` (an absolute directory), `http://mirror:8080/images` or
    /// `https://mirror/images` (trusting the system's roots; see [`ImageStore::with_ca_file`]).
    fn from_str(s: &str) -> Result<ImageStore, ImageError> {
        let fail = |message: &str| ImageError {
            store: s.to_owned(),
            message: message.to_owned(),
        };
        if s.starts_with('/') {
            return Ok(ImageStore::Dir(PathBuf::from(s)));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            if rest.trim_end_matches('/').is_empty() {
                return Err(fail("names no server"));
            }
            return Ok(ImageStore::Http(s.trim_end_matches('/').to_owned()));
        }
        if let Some(rest) = s.strip_prefix("https://") {
            if rest.trim_end_matches('/').is_empty() {
                return Err(fail("names no server"));
            }
            return Ok(ImageStore::Https {
                url: s.trim_end_matches('/').to_owned(),
                ca_file: None,
            });
        }
        Err(fail(
            "expected an absolute directory or an http:// or https:// URL",
        ))
    }
}

impl fmt::Display for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageStore::Dir(dir) => write!(f, "{}", dir.display()),
            ImageStore::Http(url) | ImageStore::Https { url, .. } => f.write_str(url),
        }
    }
}

/// The setting that names a host's image store, in its options and the daemon's `[drivers]`.
pub const STORE_OPTION: &str = "image_store";

/// The image store a host's driver options give (`image_store`, with `image_store_ca` for an
/// `https://` one), if any. An error names the option at fault and what is wrong with it.
pub fn store_from_options(
    options: &BTreeMap<String, String>,
) -> Result<Option<ImageStore>, (&'static str, String)> {
    let ca = options.get(CA_FILE_OPTION).map(Path::new);
    let Some(store) = options.get(STORE_OPTION) else {
        return match ca {
            Some(ca) => Err((
                CA_FILE_OPTION,
                format!(
                    "{} is a CA for an https:// image store, but no {STORE_OPTION} is set",
                    ca.display()
                ),
            )),
            None => Ok(None),
        };
    };
    let store: ImageStore = store
        .parse()
        .map_err(|e: ImageError| (STORE_OPTION, e.message))?;
    store
        .with_ca_file(ca)
        .map(Some)
        .map_err(|e| (CA_FILE_OPTION, e.message))
}

impl ImageStore {
    /// The same store trusting the CA certificates (PEM) in `ca_file` beside the system's roots
    /// (nothing changes for `None`). Only an `https://` store takes one; the file is read now,
    /// so that a missing or unreadable one is an error at once, naming it.
    pub fn with_ca_file(self, ca_file: Option<&Path>) -> Result<ImageStore, ImageError> {
        let Some(ca) = ca_file else {
            return Ok(self);
        };
        match self {
            ImageStore::Https { url, .. } => {
                let store = ImageStore::Https {
                    url,
                    ca_file: Some(ca.to_owned()),
                };
                read_ca_file(ca).map_err(|m| store.error(m))?;
                Ok(store)
            }
            other => Err(other.error(format!(
                "{CA_FILE_OPTION} {} is for an https:// store only",
                ca.display()
            ))),
        }
    }

    /// The CA file an `https://` store trusts beside the system's roots, if it names one.
    pub fn ca_file(&self) -> Option<&Path> {
        match self {
            ImageStore::Https { ca_file, .. } => ca_file.as_deref(),
            _ => None,
        }
    }

    /// The URL of an HTTP or HTTPS store.
    fn url(&self) -> Option<&str> {
        match self {
            ImageStore::Dir(_) => None,
            ImageStore::Http(url) | ImageStore::Https { url, .. } => Some(url),
        }
    }

    /// The HTTP client for this store: for `https://`, verifying the server against the
    /// system's roots and the store's CA file.
    fn agent(&self) -> Result<ureq::Agent, ImageError> {
        let builder = ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(HTTP_TIMEOUT_S))
            .timeout_read(std::time::Duration::from_secs(HTTP_TIMEOUT_S));
        let builder = match self {
            ImageStore::Https { ca_file, .. } => {
                let tls = tls_config(ca_file.as_deref()).map_err(|m| self.error(m))?;
                builder.tls_config(Arc::new(tls))
            }
            _ => builder,
        };
        Ok(builder.build())
    }

    /// `GET` or `HEAD` of `file` in an HTTP or HTTPS store at `url`; errors name the file.
    fn call(
        &self,
        agent: &ureq::Agent,
        method: &str,
        url: &str,
        file: &str,
    ) -> Result<ureq::Response, ImageError> {
        agent
            .request(method, &format!("{url}/{file}"))
            .call()
            .map_err(|e| self.error(format!("{file}: {}", http_failure(e, self.ca_file()))))
    }
    fn error(&self, message: String) -> ImageError {
        ImageError {
            store: self.to_string(),
            message,
        }
    }

    /// The image files (`linux.qcow2`) the store holds with a digest beside them, by name:
    /// read from a directory store, `None` from an HTTP one (a server lists nothing).
    pub fn list(&self) -> Result<Option<Vec<String>>, ImageError> {
        let ImageStore::Dir(dir) = self else {
            return Ok(None);
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| self.error(format!("cannot list the directory: {e}")))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.error(format!("cannot list the directory: {e}")))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(file) = name.strip_suffix(DIGEST_SUFFIX)
                && !file.is_empty()
                && !file.starts_with('.')
                && dir.join(file).is_file()
            {
                files.push(file.to_owned());
            }
        }
        files.sort();
        Ok(Some(files))
    }

    /// The size and digest the store gives for image `file`, without reading the image (from
    /// an HTTP or HTTPS store: its digest file and a `HEAD` of the image, no download).
    pub fn describe(&self, file: &str) -> Result<(u64, Sha256Digest), ImageError> {
        let Some(url) = self.url() else {
            let source = self.open(file)?;
            return Ok((source.size, source.digest));
        };
        let digest_file = self.digest_file(file)?;
        let agent = self.agent()?;
        let digest_text = self
            .call(&agent, "GET", url, &digest_file)?
            .into_string()
            .map_err(|e| self.error(format!("reading {digest_file}: {e}")))?;
        let answer = self.call(&agent, "HEAD", url, file)?;
        Ok((
            self.content_length(file, &answer)?,
            self.digest(&digest_file, &digest_text)?,
        ))
    }

    /// The digest file beside image `file`, once `file` is known to be a plain file name.
    fn digest_file(&self, file: &str) -> Result<String, ImageError> {
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            return Err(self.error(format!("{file:?} is not an image file name")));
        }
        Ok(format!("{file}{DIGEST_SUFFIX}"))
    }

    fn content_length(&self, file: &str, answer: &ureq::Response) -> Result<u64, ImageError> {
        answer
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| self.error(format!("{file}: the server sent no Content-Length")))
    }

    fn digest(&self, digest_file: &str, text: &str) -> Result<Sha256Digest, ImageError> {
        Sha256Digest::parse(text.split_whitespace().next().unwrap_or("")).ok_or_else(|| {
            self.error(format!(
                "{digest_file} does not start with a SHA-256 digest (64 hex digits)"
            ))
        })
    }

    /// Image `file` (`linux.qcow2`) with its size and digest, ready to read.
    pub fn open(&self, file: &str) -> Result<ImageSource, ImageError> {
        let digest_file = self.digest_file(file)?;
        let (digest_text, size, reader): (String, u64, Box<dyn Read + Send>) = match self {
            ImageStore::Dir(dir) => {
                let digest_text = std::fs::read_to_string(dir.join(&digest_file))
                    .map_err(|e| self.error(format!("cannot read {digest_file}: {e}")))?;
                let f = std::fs::File::open(dir.join(file))
                    .map_err(|e| self.error(format!("cannot open {file}: {e}")))?;
                let size = f
                    .metadata()
                    .map_err(|e| self.error(format!("cannot read the size of {file}: {e}")))?
                    .len();
                (digest_text, size, Box::new(f))
            }
            ImageStore::Http(url) | ImageStore::Https { url, .. } => {
                let agent = self.agent()?;
                let digest_text = self
                    .call(&agent, "GET", url, &digest_file)?
                    .into_string()
                    .map_err(|e| self.error(format!("reading {digest_file}: {e}")))?;
                let answer = self.call(&agent, "GET", url, file)?;
                let size = self.content_length(file, &answer)?;
                (digest_text, size, answer.into_reader())
            }
        };
        let digest = self.digest(&digest_file, &digest_text)?;
        Ok(ImageSource {
            store: self.to_string(),
            file: file.to_owned(),
            size,
            digest,
            reader,
            hasher: Sha256::new(),
            read: 0,
        })
    }
}

/// How long a store's HTTP server may keep berth waiting for the next bytes.
const HTTP_TIMEOUT_S: u64 = 60;

/// What went wrong with a request to a store's server, in words: the status it answered, or,
/// when the server's certificate was refused, why and what would make it trusted.
fn http_failure(error: ureq::Error, ca_file: Option<&Path>) -> String {
    let transport = match error {
        ureq::Error::Status(code, _) => return format!("the server answered {code}"),
        ureq::Error::Transport(t) => t,
    };
    let Some(tls) = tls_error(&transport) else {
        return transport.to_string();
    };
    let trusted = match ca_file {
        Some(ca) => format!(
            "the system's trusted roots and {CA_FILE_OPTION} {}",
            ca.display()
        ),
        None => "the system's trusted roots".to_owned(),
    };
    match tls {
        rustls::Error::InvalidCertificate(why) => format!(
            "the server's certificate was refused ({why}); it was checked against {trusted}: \
             if a private CA signed it, name that CA's certificate (PEM) with {CA_FILE_OPTION}"
        ),
        other => format!("the TLS handshake with the server failed: {other}"),
    }
}

/// The TLS failure behind a transport error, if one is.
fn tls_error(transport: &ureq::Transport) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(transport);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An I/O error hides the error it wraps from `source`.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// The system's trusted roots (what `openssl` and `curl` trust: the distribution's bundle, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`), read once per process.
fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the system's trusted roots for https:// image stores");
        }
        found.certs
    })
}

/// The CA certificates of a PEM file; an error names the file.
fn read_ca_file(ca: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let name = || format!("{CA_FILE_OPTION} {}", ca.display());
    let text = std::fs::read(ca).map_err(|e| format!("{}: {e}", name()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", name()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in it", name()));
    }
    Ok(certs)
}

/// TLS settings that trust the system's roots and the certificates in `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    // A root the system lists but rustls cannot read is left out, as other TLS clients do.
    roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(ca) = ca_file {
        for cert in read_ca_file(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{CA_FILE_OPTION} {}: {e}", ca.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "no certificate to trust: the system has no trusted roots (install its CA \
             certificates) and the store names no {CA_FILE_OPTION}"
        ));
    }
    // ring, as the daemon's own TLS and the client's (rustls marks it deprecated for its lack
    // of post-quantum key exchange, which TLS 1.3 with X25519 does without).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("setting up TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// From 64 hex digits.
    pub fn parse(hex: &str) -> Option<Sha256Digest> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Sha256Digest(out))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// An image being read from its store, hashed as it goes.
pub struct ImageSource {
    store: String,
    pub file: String,
    /// Its size in bytes, as the store says.
    pub size: u64,
    /// The digest the store gives for it.
    pub digest: Sha256Digest,
    reader: Box<dyn Read + Send>,
    hasher: Sha256,
    read: u64,
}

impl fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageSource")
            .field("store", &self.store)
            .field("file", &self.file)
            .field("size", &self.size)
            .finish()
    }
}

impl Read for ImageSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

impl ImageSource {
    /// After every byte was read: whether they were as many as the store said and hash to
    /// its digest.
    pub fn verify(self) -> Result<(), ImageError> {
        let fail = |message: String| ImageError {
            store: self.store.clone(),
            message,
        };
        if self.read != self.size {
            return Err(fail(format!(
                "{} gave {} bytes, not the {} it announced",
                self.file, self.read, self.size
            )));
        }
        let got = Sha256Digest(self.hasher.clone().finalize().into());
        if got != self.digest {
            return Err(fail(format!(
                "{} does not match its digest: {}{DIGEST_SUFFIX} says {}, its bytes hash to \
                 {got}",
                self.file, self.file, self.digest
            )));
        }
        Ok(())
    }
}

/// How far one pull has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullProgress {
    /// The file being pulled (`linux.qcow2`).
    pub file: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

impl PullProgress {
    /// Whole percent done.
    pub fn percent(&self) -> u64 {
        (u128::from(self.done_bytes) * 100 / u128::from(self.total_bytes.max(1))).min(100) as u64
    }
}

impl fmt::Display for PullProgress {
    /// `pulling linux.qcow2 41%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pulling {} {}%", self.file, self.percent())
    }
}

/// How one pull of a base image to a host ended, for metrics and hooks.
#[derive(Clone, Debug, PartialEq)]
pub struct PullOutcome {
    pub host: String,
    /// The base image's name (`linux` for `linux.qcow2`).
    pub image: String,
    /// Bytes brought to the host: the image's size when it succeeded, what was sent before it
    /// failed otherwise.
    pub bytes: u64,
    /// From the decision to pull (after the image was found missing) to its end.
    pub seconds: f64,
    /// Why it failed, or `None` when the image arrived with its digest checked.
    pub error: Option<String>,
}

/// What the daemon runs as each pull ends (on the driver's blocking thread, so it must be
/// quick: count, enqueue).
pub type PullObserver = Arc<dyn Fn(&PullOutcome) + Send + Sync>;

/// One image on one host: the turn that keeps its pulls one at a time, and the running pull's
/// progress. The turn is an async-aware lock so that a driver whose pull is async (Parallels,
/// over SSH) can hold it across awaits, while a blocking one (libvirt) waits on it from its
/// blocking thread.
#[derive(Debug, Default)]
struct Slot {
    turn: tokio::sync::Mutex<()>,
    progress: Mutex<Option<PullProgress>>,
}

/// The pulls of a daemon's drivers: one at a time per base image and host, however many VMs
/// wait for it, and each one's progress for those who ask. Keyed by host and base image name
/// (what templates name), so the daemon finds a VM's pull from its template alone. Cheap to
/// clone (one shared board).
#[derive(Clone, Default)]
pub struct Pulls {
    slots: Arc<Mutex<SlotsByImage>>,
    observers: Arc<Mutex<Vec<PullObserver>>>,
    /// What each host's driver last found in its image directory, by host name.
    held: Arc<Mutex<BTreeMap<String, Holdings>>>,
}

/// What a driver last found in a host's image directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holdings {
    /// Its base images, by name.
    pub images: Vec<HeldImage>,
    /// Its image budget (`image_budget_mib`), when one is set.
    pub budget_bytes: Option<u64>,
}

impl Holdings {
    /// Bytes its base images take on disk.
    pub fn used_bytes(&self) -> u64 {
        self.images
            .iter()
            .fold(0, |sum, h| sum.saturating_add(h.bytes))
    }
}

/// One pull running now, as the board lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPull {
    pub host: String,
    /// The base image's name (`linux`).
    pub image: String,
    pub progress: PullProgress,
}

impl fmt::Debug for Pulls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pulls").finish_non_exhaustive()
    }
}

/// One slot per (host, base image name).
type SlotsByImage = BTreeMap<(String, String), Arc<Slot>>;

impl Pulls {
    fn slot(&self, host: &str, base: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((host.to_owned(), base.to_owned()))
            .or_default()
            .clone()
    }

    /// Runs `observer` as each later pull ends, with how it ended.
    pub fn observe(&self, observer: PullObserver) {
        self.observers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(observer);
    }

    /// Tells the observers how a pull ended; drivers call it once per pull they start.
    pub fn finished(&self, outcome: &PullOutcome) {
        let observers = self
            .observers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for observe in observers {
            observe(outcome);
        }
    }

    /// The turn to pull base image `base` to `host`; [`PullTurn::hold`] waits for it.
    pub fn turn(&self, host: &str, base: &str) -> PullTurn {
        PullTurn {
            slot: self.slot(host, base),
        }
    }

    /// Records what `host`'s driver found in its image directory (each probe does).
    pub fn record_held(&self, host: &str, holdings: Holdings) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), holdings);
    }

    /// What `host`'s driver last found in its image directory, if it keeps count.
    pub fn held(&self, host: &str) -> Option<Holdings> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }

    /// Every pull running now, by host then image.
    pub fn running(&self) -> Vec<RunningPull> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter_map(|((host, image), slot)| {
                let progress = slot
                    .progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()?;
                Some(RunningPull {
                    host: host.clone(),
                    image: image.clone(),
                    progress,
                })
            })
            .collect()
    }

    /// The pulls running on `host`.
    pub fn on_host(&self, host: &str) -> Vec<PullProgress> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|((h, _), _)| h == host)
            .filter_map(|(_, slot)| {
                slot.progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .collect()
    }

    /// The progress of a pull of base image `base` to `host`, while one runs.
    pub fn progress(&self, host: &str, base: &str) -> Option<PullProgress> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.get(&(host.to_owned(), base.to_owned()))?;
        slot.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The turn to pull one image to one host.
pub struct PullTurn {
    slot: Arc<Slot>,
}

impl PullTurn {
    /// Holds the turn: blocks while another pull of the same image to the same host runs.
    /// For blocking threads only (it must not be called from async code).
    pub fn hold(&self) -> HeldTurn<'_> {
        HeldTurn {
            _turn: self.slot.turn.blocking_lock(),
            slot: &self.slot,
        }
    }

    /// [`Self::hold`] for async code: waits without blocking a thread.
    pub async fn hold_async(&self) -> HeldTurn<'_> {
        HeldTurn {
            _turn: self.slot.turn.lock().await,
            slot: &self.slot,
        }
    }
}

/// A held turn: the pull it guards reports progress through it; dropping it ends the pull's
/// progress report.
pub struct HeldTurn<'a> {
    _turn: tokio::sync::MutexGuard<'a, ()>,
    slot: &'a Slot,
}

impl HeldTurn<'_> {
    /// Reports `done` of `total` bytes of `file` pulled.
    pub fn report(&self, file: &str, done_bytes: u64, total_bytes: u64) {
        *self.slot.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(PullProgress {
            file: file.to_owned(),
            done_bytes,
            total_bytes,
        });
    }
}

impl Drop for HeldTurn<'_> {
    fn drop(&mut self) {
        *self.slot.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A base image held on a host, as eviction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldImage {
    /// The image's name (`linux` for `linux.qcow2`).
    pub name: String,
    /// What it takes on the host's disk.
    pub bytes: u64,
    /// When it was last used, in seconds since the Unix epoch: the last time a VM was
    /// provisioned from it, or else when it arrived on the host.
    pub last_used_s: u64,
    /// Whether it must stay: it backs an overlay or a VM's disk, is being pulled, or a
    /// provisioning is about to use it.
    pub in_use: bool,
}

/// A pull that does not fit in a host's image budget even with every unused image gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// The image being pulled.
    pub image: String,
    pub image_bytes: u64,
    pub budget_bytes: u64,
    /// The images that must stay, with their sizes, by name.
    pub in_use: Vec<(String, u64)>,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used: u64 = self.in_use.iter().map(|(_, bytes)| bytes).sum();
        write!(
            f,
            "{} ({} MiB) does not fit in the image budget of {} MiB (image_budget_mib): \
             images in use take {} MiB",
            self.image,
            mib_ceil(self.image_bytes),
            self.budget_bytes / MIB,
            mib_ceil(used)
        )?;
        if self.in_use.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self
            .in_use
            .iter()
            .map(|(name, bytes)| format!("{name} {} MiB", mib_ceil(*bytes)))
            .collect();
        write!(f, " ({})", list.join(", "))
    }
}

impl std::error::Error for OverBudget {}

const MIB: u64 = 1024 * 1024;

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Which held images to remove so that `image` (`image_bytes`) fits beside the rest within
/// `budget_bytes`: the least recently used of those not in use, oldest first (ties by name),
/// and no more than needed. Nothing when it fits already. When it cannot fit even with every
/// unused image gone, nothing is removed and the answer says what is in use.
pub fn evictions(
    held: &[HeldImage],
    image: &str,
    image_bytes: u64,
    budget_bytes: u64,
) -> Result<Vec<String>, OverBudget> {
    let mut total = held
        .iter()
        .fold(image_bytes, |sum, h| sum.saturating_add(h.bytes));
    let mut unused: Vec<&HeldImage> = held.iter().filter(|h| !h.in_use).collect();
    unused.sort_by(|a, b| (a.last_used_s, &a.name).cmp(&(b.last_used_s, &b.name)));
    let mut evict = Vec::new();
    for h in unused {
        if total <= budget_bytes {
            break;
        }
        total -= h.bytes;
        evict.push(h.name.clone());
    }
    if total > budget_bytes {
        let mut in_use: Vec<(String, u64)> = held
            .iter()
            .filter(|h| h.in_use)
            .map(|h| (h.name.clone(), h.bytes))
            .collect();
        in_use.sort();
        return Err(OverBudget {
            image: image.to_owned(),
            image_bytes,
            budget_bytes,
            in_use,
        });
    }
    Ok(evict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observers_hear_how_each_pull_ended() {
        let pulls = Pulls::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        pulls.observe(Arc::new(move |o: &PullOutcome| {
            sink.lock().expect("lock").push(o.clone());
        }));
        let outcome = PullOutcome {
            host: "h1".into(),
            image: "linux".into(),
            bytes: 42,
            seconds: 0.5,
            error: None,
        };
        pulls.clone().finished(&outcome);
        assert_eq!(*heard.lock().expect("lock"), vec![outcome]);
    }

    fn held(name: &str, mib: u64, last_used_s: u64, in_use: bool) -> HeldImage {
        HeldImage {
            name: name.into(),
            bytes: mib * MIB,
            last_used_s,
            in_use,
        }
    }

    #[test]
    fn nothing_is_evicted_when_the_image_fits() {
        let images = [held("a", 100, 1, false), held("b", 100, 2, false)];
        assert_eq!(evictions(&images, "c", 100 * MIB, 300 * MIB), Ok(vec![]));
        assert_eq!(evictions(&[], "c", 100 * MIB, 100 * MIB), Ok(vec![]));
    }

    #[test]
    fn the_least_recently_used_unused_images_go_first_and_no_more_than_needed() {
        let images = [
            held("new", 100, 30, false),
            held("old", 100, 10, false),
            held("live", 100, 5, true),
            held("mid", 100, 20, false),
        ];
        // 400 held + 100 incoming in 300: two must go, the oldest unused ones.
        assert_eq!(
            evictions(&images, "c", 100 * MIB, 300 * MIB),
            Ok(vec!["old".to_owned(), "mid".to_owned()])
        );
        // One is enough when the budget is larger.
        assert_eq!(
            evictions(&images, "c", 100 * MIB, 400 * MIB),
            Ok(vec!["old".to_owned()])
        );
        // Equal last use: by name, so the choice is the same every time.
        let tied = [held("b", 100, 7, false), held("a", 100, 7, false)];
        assert_eq!(
            evictions(&tied, "c", 100 * MIB, 200 * MIB),
            Ok(vec!["a".to_owned()])
        );
    }

    #[test]
    fn an_image_in_use_is_never_evicted_even_if_it_is_the_oldest() {
        let images = [held("live", 500, 1, true), held("spare", 50, 99, false)];
        assert_eq!(
            evictions(&images, "c", 100 * MIB, 600 * MIB),
            Ok(vec!["spare".to_owned()])
        );
    }

    #[test]
    fn a_pull_that_cannot_fit_evicts_nothing_and_names_budget_image_and_what_is_in_use() {
        let images = [
            held("live", 300, 1, true),
            held("spare", 100, 2, false),
            held("build", 200, 3, true),
        ];
        let e = evictions(&images, "win11", 150 * MIB, 600 * MIB).expect_err("cannot fit");
        assert_eq!(
            e.in_use,
            vec![
                ("build".to_owned(), 200 * MIB),
                ("live".to_owned(), 300 * MIB)
            ]
        );
        assert_eq!(
            e.to_string(),
            "win11 (150 MiB) does not fit in the image budget of 600 MiB (image_budget_mib): \
             images in use take 500 MiB (build 200 MiB, live 300 MiB)"
        );
        // An image larger than the budget on an empty host.
        let e = evictions(&[], "huge", 2048 * MIB, 1024 * MIB).expect_err("too large");
        assert_eq!(
            e.to_string(),
            "huge (2048 MiB) does not fit in the image budget of 1024 MiB (image_budget_mib): \
             images in use take 0 MiB"
        );
    }

    fn store_with(file: &str, bytes: &[u8], digest: &str) -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file), bytes).unwrap();
        std::fs::write(
            dir.path().join(format!("{file}{DIGEST_SUFFIX}")),
            format!("{digest}  {file}\n"),
        )
        .unwrap();
        let store = ImageStore::Dir(dir.path().to_owned());
        (dir, store)
    }

    fn read_all(mut s: ImageSource) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        s.verify().map(|()| out)
    }

    #[test]
    fn a_directory_store_lists_the_images_with_a_digest_and_describes_one() {
        let bytes = b"image bytes".to_vec();
        let digest = Sha256Digest::of(&bytes).to_string();
        let (dir, store) = store_with("linux.qcow2", &bytes, &digest);
        // No digest beside it: not an image of the store.
        std::fs::write(dir.path().join("stray.qcow2"), b"x").unwrap();
        assert_eq!(store.list().unwrap(), Some(vec!["linux.qcow2".to_owned()]));
        let (size, got) = store.describe("linux.qcow2").unwrap();
        assert_eq!((size, got.to_string()), (bytes.len() as u64, digest));
        let e = store.describe("stray.qcow2").unwrap_err();
        assert!(e.message.contains("stray.qcow2.sha256"), "{e}");
        let http = ImageStore::Http("http://mirror:8080/images".into());
        assert_eq!(http.list().unwrap(), None);
    }

    /// An HTTP store is described from its digest file and a `HEAD` of the image: nothing is
    /// downloaded (an image list would otherwise start a download per image).
    #[test]
    fn an_http_store_describes_an_image_without_downloading_it() {
        use std::io::{BufRead, BufReader, Write};
        let bytes = b"image bytes".to_vec();
        let digest = Sha256Digest::of(&bytes).to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/images", listener.local_addr().unwrap());
        let size_served = bytes.len();
        let served = {
            let digest = digest.clone();
            std::thread::spawn(move || {
                let mut asked = Vec::new();
                for _ in 0..2 {
                    let (stream, _) = listener.accept().unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        if header.trim().is_empty() {
                            break;
                        }
                    }
                    let line = line.trim().to_owned();
                    let (length, body) = if line.starts_with("GET /images/linux.qcow2.sha256 ") {
                        (digest.len(), digest.clone())
                    } else {
                        (size_served, String::new())
                    };
                    write!(
                        &stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
                    )
                    .unwrap();
                    asked.push(line);
                }
                asked
            })
        };
        let store = ImageStore::Http(url);
        let (size, got) = store.describe("linux.qcow2").unwrap();
        assert_eq!((size, got.to_string()), (bytes.len() as u64, digest));
        assert_eq!(
            served.join().unwrap(),
            vec![
                "GET /images/linux.qcow2.sha256 HTTP/1.1".to_owned(),
                "HEAD /images/linux.qcow2 HTTP/1.1".to_owned(),
            ]
        );
    }

    /// An `https://` store over a real TLS server: with its CA named, the image reads whole
    /// and verified; a certificate that no trusted root vouches for (none named, or another
    /// CA's) is refused, naming the store and why; a digest mismatch is caught as over http.
    #[test]
    fn an_https_store_is_verified_against_the_ca_it_names() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, other_dir, root) = (
            dir.path().join("ca"),
            dir.path().join("other"),
            dir.path().join("www"),
        );
        for d in [&ca_dir, &other_dir, &root.join("images")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (Some([ca, cert, key]), Some([other_ca, ..])) = (
            berth_testkit::tls::private_ca(&ca_dir),
            berth_testkit::tls::private_ca(&other_dir),
        ) else {
            berth_testkit::skip_or_fail("openssl is not installed, so no certificate for the test");
            return;
        };
        let bytes = b"qcow2 pretend bytes over tls".repeat(5000);
        let images = root.join("images");
        std::fs::write(images.join("linux.qcow2"), &bytes).unwrap();
        std::fs::write(
            images.join("linux.qcow2.sha256"),
            format!("{}  linux.qcow2\n", Sha256Digest::of(&bytes)),
        )
        .unwrap();
        std::fs::write(images.join("bad.qcow2"), &bytes).unwrap();
        std::fs::write(
            images.join("bad.qcow2.sha256"),
            format!("{}  bad.qcow2\n", Sha256Digest::of(b"other bytes")),
        )
        .unwrap();
        let server = berth_testkit::tls::HttpsFiles::start(&root, &cert, &key);
        let url = format!("{}/images", server.url());
        let store: ImageStore = url.parse().unwrap();

        let trusted = store.clone().with_ca_file(Some(&ca)).unwrap();
        assert_eq!(trusted.ca_file(), Some(ca.as_path()));
        let (size, digest) = trusted.describe("linux.qcow2").unwrap();
        assert_eq!(
            (size, digest),
            (bytes.len() as u64, Sha256Digest::of(&bytes))
        );
        assert_eq!(
            read_all(trusted.open("linux.qcow2").unwrap()).unwrap(),
            bytes
        );
        // A digest, a HEAD, a digest and the image (counted once each answer is sent).
        let answered = 4;
        berth_testkit::wait_for(
            "the server to count its answers",
            Duration::from_secs(10),
            || (server.served() == answered).then_some(()),
        );

        // No CA named: the system's roots do not know the private CA.
        let e = store.open("linux.qcow2").unwrap_err();
        assert_eq!(e.store, url);
        assert!(
            e.message
                .starts_with("linux.qcow2.sha256: the server's certificate was refused")
                && e.message.contains("UnknownIssuer")
                && e.message.contains("the system's trusted roots:")
                && e.message
                    .contains("name that CA's certificate (PEM) with image_store_ca"),
            "{e}"
        );
        // Another CA named: refused too, and the message names the file it trusted.
        let e = store
            .clone()
            .with_ca_file(Some(&other_ca))
            .unwrap()
            .describe("linux.qcow2")
            .unwrap_err();
        assert!(
            e.message.contains("certificate was refused")
                && e.message
                    .contains(&format!("image_store_ca {}", other_ca.display())),
            "{e}"
        );
        assert_eq!(server.served(), answered, "nothing was served untrusted");

        let e = read_all(trusted.open("bad.qcow2").unwrap()).unwrap_err();
        assert!(
            e.message.contains("bad.qcow2 does not match its digest"),
            "{e}"
        );
        let e = trusted.open("missing.qcow2").unwrap_err();
        assert_eq!(e.message, "missing.qcow2.sha256: the server answered 404");
    }

    #[test]
    fn the_board_lists_running_pulls_and_keeps_each_hosts_holdings() {
        let pulls = Pulls::default();
        assert!(pulls.running().is_empty());
        let turn = pulls.turn("h1", "linux");
        let held = turn.hold();
        held.report("linux.qcow2", 5, 10);
        let running = pulls.running();
        assert_eq!(running.len(), 1);
        assert_eq!(
            (running[0].host.as_str(), running[0].image.as_str()),
            ("h1", "linux")
        );
        assert_eq!(running[0].progress.percent(), 50);
        drop(held);
        assert!(pulls.running().is_empty());
        assert_eq!(pulls.held("h1"), None);
        let holdings = Holdings {
            images: vec![HeldImage {
                name: "linux".into(),
                bytes: 3 * MIB,
                last_used_s: 7,
                in_use: true,
            }],
            budget_bytes: Some(10 * MIB),
        };
        pulls.record_held("h1", holdings.clone());
        assert_eq!(pulls.held("h1"), Some(holdings));
        assert_eq!(pulls.held("h1").unwrap().used_bytes(), 3 * MIB);
    }

    #[test]
    fn stores_parse_and_name_what_is_wrong() {
        assert_eq!(
            "/srv/images".parse(),
            Ok(ImageStore::Dir("/srv/images".into()))
        );
        assert_eq!(
            "http://mirror:8080/images/".parse(),
            Ok(ImageStore::Http("http://mirror:8080/images".into()))
        );
        for bad in ["images", "http://", "ftp://x", ""] {
            let e = bad.parse::<ImageStore>().unwrap_err();
            assert_eq!(e.store, bad);
        }
        assert_eq!(
            "https://mirror/images/".parse(),
            Ok(ImageStore::Https {
                url: "https://mirror/images".into(),
                ca_file: None
            })
        );
        let e = "https://".parse::<ImageStore>().unwrap_err();
        assert!(e.message.contains("names no server"), "{e}");
    }

    #[test]
    fn only_an_https_store_takes_a_ca_file_and_it_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let https: ImageStore = "https://mirror/images".parse().unwrap();
        // None changes nothing.
        assert_eq!(https.clone().with_ca_file(None), Ok(https.clone()));
        let e = https.clone().with_ca_file(Some(&ca)).unwrap_err();
        assert!(
            e.message.contains("image_store_ca") && e.message.contains("ca.pem"),
            "{e}"
        );
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let e = https.clone().with_ca_file(Some(&ca)).unwrap_err();
        assert!(e.message.contains("no CERTIFICATE"), "{e}");
        assert_eq!(e.store, "https://mirror/images");
        for other in ["http://mirror/images", "/srv/images"] {
            let store: ImageStore = other.parse().unwrap();
            let e = store.with_ca_file(Some(&ca)).unwrap_err();
            assert!(e.message.contains("for an https:// store only"), "{e}");
        }
    }

    #[test]
    fn an_image_that_matches_its_digest_reads_whole() {
        let bytes = b"qcow2 pretend bytes".repeat(1000);
        let digest = Sha256Digest::of(&bytes).to_string();
        let (_dir, store) = store_with("linux.qcow2", &bytes, &digest);
        let s = store.open("linux.qcow2").unwrap();
        assert_eq!(s.size, bytes.len() as u64);
        assert_eq!(read_all(s).unwrap(), bytes);
    }

    #[test]
    fn a_corrupt_image_or_digest_is_caught_and_named() {
        let bytes = b"the image".to_vec();
        let other = Sha256Digest::of(b"another image").to_string();
        let (_dir, store) = store_with("linux.qcow2", &bytes, &other);
        let e = read_all(store.open("linux.qcow2").unwrap()).unwrap_err();
        assert!(
            e.message.contains("linux.qcow2 does not match its digest"),
            "{e}"
        );
        let (_dir, store) = store_with("linux.qcow2", &bytes, "not-hex");
        let e = store.open("linux.qcow2").unwrap_err();
        assert!(
            e.message.contains("linux.qcow2.sha256 does not start"),
            "{e}"
        );
        let e = store.open("macos.qcow2").unwrap_err();
        assert!(e.message.contains("macos.qcow2.sha256"), "{e}");
        let e = store.open("../etc/passwd").unwrap_err();
        assert!(e.message.contains("not an image file name"), "{e}");
    }

    #[test]
    fn pulls_take_turns_per_image_and_host_and_report_progress() {
        let pulls = Pulls::default();
        let a = pulls.turn("h1", "linux");
        let held = a.hold();
        held.report("linux.qcow2", 41, 100);
        let p = pulls.progress("h1", "linux").unwrap();
        assert_eq!(p.to_string(), "pulling linux.qcow2 41%");
        assert_eq!(pulls.on_host("h1").len(), 1);
        assert!(pulls.on_host("h2").is_empty());
        // Another image, or another host, does not wait.
        let other = pulls.turn("h2", "linux");
        drop(other.hold());
        // The same image to the same host waits for the first pull.
        let waiting = {
            let pulls = pulls.clone();
            std::thread::spawn(move || {
                let t = pulls.turn("h1", "linux");
                let _h = t.hold();
                std::time::Instant::now()
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let released = std::time::Instant::now();
        drop(held);
        let got = waiting.join().unwrap();
        assert!(
            got >= released,
            "the second pull began before the first ended"
        );
        assert_eq!(pulls.progress("h1", "linux"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_pull_waits_for_the_turn_a_blocking_pull_holds() {
        let pulls = Pulls::default();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let released = {
            let pulls = pulls.clone();
            std::thread::spawn(move || {
                let t = pulls.turn("mac1", "macos-16");
                let h = t.hold();
                h.report("macos-16.pvm.tar", 1, 2);
                held_tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
                let at = std::time::Instant::now();
                drop(h);
                at
            })
        };
        held_rx.recv().unwrap();
        let turn = pulls.turn("mac1", "macos-16");
        let held = turn.hold_async().await;
        let got = std::time::Instant::now();
        assert!(got >= released.join().unwrap(), "both pulls held the turn");
        held.report("macos-16.pvm.tar", 2, 2);
        assert_eq!(
            pulls.progress("mac1", "macos-16").map(|p| p.percent()),
            Some(100)
        );
    }
}
