//! Pulls of templates to a Mac: a template VM the Mac lacks is copied from the image store over
//! the host's own SSH connection, its digest checked on the Mac, then unpacked and registered
//! with `prlctl register`.
//!
//! In the store, template `NAME` is a tar archive of its bundle, `NAME.pvm.tar` (one top-level
//! directory `NAME.pvm` whose `config.pvs` names the VM `NAME` and marks it a template), beside
//! `NAME.pvm.tar.sha256` (see [`crate::images`]). In the host's `template_dir`:
//! - `NAME.pvm.tar.pulling`: present while `NAME` is being pulled. Everything of `NAME` beside
//!   it (`NAME.pvm.tar`, `NAME.pvm`) is a pull's and may be partial: the next pull removes it
//!   all before it starts again, so a copy cut short by a crash is never registered;
//! - `NAME.pvm.tar`: the archive as copied, removed once unpacked;
//! - `NAME.pvm`: the bundle, registered once the archive's digest matched on the Mac.
//!
//! A template is registered only after its digest matched, so a registered template is whole
//! even if the marker outlived it (a crash between registering and removing the marker): a
//! probe reports it and a pull leaves it alone.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use openssh::{Session, Stdio};
use tokio::io::AsyncWriteExt;

use super::evict::USED_EXT;
use super::{ParallelsHost, RunError, error_chain, is_plain_name, quote};
use crate::DriverError;
use crate::images::{HeldTurn, ImageSource, ImageStore, PullOutcome, Sha256Digest};

/// The suffix of a template's archive, in the store and on the Mac while it is pulled.
pub const ARCHIVE_EXT: &str = ".pvm.tar";

/// The suffix of the marker beside a template's archive while it is pulled.
pub const PULLING_EXT: &str = ".pulling";

/// The suffix of a template's bundle.
pub(super) const BUNDLE_EXT: &str = ".pvm";

/// How much of the archive goes into the SSH session at a time.
const PULL_CHUNK: usize = 1 << 20;

/// How many chunks the store's reader may be ahead of the SSH session.
const CHUNKS_AHEAD: usize = 4;

/// What the Mac's template directory holds of one template, before a pull.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Leftovers {
    /// The directory as an absolute path (`prlctl register` wants one).
    pub(super) dir: String,
    /// A pull's marker is there: what it left is partial.
    pub(super) marker: bool,
    /// `NAME.pvm` is there.
    pub(super) bundle: bool,
}

impl ParallelsHost {
    /// Brings template `template` to the Mac from its image store unless the Mac has it: one
    /// pull per template and host at a time (a provisioning that finds one running waits for
    /// it, then finds the template), bounded by `pull_timeout_ms`. Without an image store it
    /// does nothing.
    pub async fn pull(&self, template: &str) -> Result<(), DriverError> {
        let Some(store) = self.config.image_store.clone() else {
            return Ok(());
        };
        if !is_plain_name(template) {
            return Err(self.request_err(format!(
                "template name {template:?} may hold only letters, digits, spaces, `-`, `_` and `.`"
            )));
        }
        let turn = self.pulls.turn(&self.name, template);
        let held = turn.hold_async().await;
        if self.list_templates().await?.iter().any(|t| t == template) {
            return Ok(());
        }
        let started = Instant::now();
        let sent = AtomicU64::new(0);
        let registering = AtomicBool::new(false);
        let writing_in = OnceLock::new();
        let limit = Duration::from_millis(self.config.pull_timeout_ms);
        let work = self.pull_from(&store, template, &held, &sent, &registering, &writing_in);
        let pulled = match tokio::time::timeout(limit, work).await {
            Ok(done) => done,
            Err(_) => Err(self.transient(format!(
                "pulling template {template} took longer than {} ms (pull_timeout_ms)",
                self.config.pull_timeout_ms
            ))),
        };
        // Never leave a partial copy that could be used. Once `prlctl register` was asked, the
        // bundle may be registered: it stays, and the next pull finds the template or, if it
        // is not registered after all, removes it by its marker.
        if let (Err(_), Some(dir)) = (&pulled, writing_in.get())
            && !registering.load(Ordering::SeqCst)
        {
            self.remove_leftovers(dir, template).await;
        }
        self.pulls.finished(&PullOutcome {
            host: self.name.clone(),
            image: template.to_owned(),
            bytes: sent.load(Ordering::SeqCst),
            seconds: started.elapsed().as_secs_f64(),
            error: pulled.as_ref().err().map(ToString::to_string),
        });
        // What the template directory holds changed (or may have): count it at the next probe.
        self.set_census_due(None);
        pulled
    }

    /// The pull itself, once the template was found missing. Once it may write into the
    /// template directory it puts the directory in `writing_in`, for the cleanup of a failure.
    async fn pull_from(
        &self,
        store: &ImageStore,
        template: &str,
        held: &HeldTurn<'_>,
        sent: &AtomicU64,
        registering: &AtomicBool,
        writing_in: &OnceLock<String>,
    ) -> Result<(), DriverError> {
        let found = self.leftovers(template).await?;
        let dir = found.dir;
        if found.marker {
            tracing::info!(host = %self.name, template, dir = %dir,
                "removing what a pull cut short left");
            // Should this fail, the leftovers stay, with their marker, for the next pull.
            self.remove_leftovers_or_fail(&dir, template).await?;
        } else if found.bundle {
            // Not berth's (no marker): never replaced.
            return Err(self.host_err(format!(
                "template {template} is not registered, but {dir}/{template}{BUNDLE_EXT} is \
                 there without berth's pull marker: register it (`prlctl register \
                 {dir}/{template}{BUNDLE_EXT}`) or remove it"
            )));
        }
        let dir = writing_in.get_or_init(|| dir);
        self.transfer(store, template, dir, held, sent, registering)
            .await
    }

    /// Copies the archive from `store`, checks it on the Mac, unpacks and registers it.
    async fn transfer(
        &self,
        store: &ImageStore,
        template: &str,
        dir: &str,
        held: &HeldTurn<'_>,
        sent: &AtomicU64,
        registering: &AtomicBool,
    ) -> Result<(), DriverError> {
        let file = format!("{template}{ARCHIVE_EXT}");
        let archive = format!("{dir}/{file}");
        let bundle = format!("{dir}/{template}{BUNDLE_EXT}");
        let marker = format!("{archive}{PULLING_EXT}");
        let long = Duration::from_millis(self.config.pull_timeout_ms);
        // The store is opened before anything is written to the Mac: a store without the
        // template leaves nothing behind.
        let source = {
            let (store, file) = (store.clone(), file.clone());
            tokio::task::spawn_blocking(move || store.open(&file))
                .await
                .map_err(|e| self.host_err(format!("opening the image store failed: {e}")))?
                .map_err(|e| self.request_err(format!("pulling template {template}: {e}")))?
        };
        let (size, digest) = (source.size, source.digest);
        {
            // Room is made and the pull put on the board at its full size under one lock, so
            // that the next pull's count sees this one.
            let _room = self.room.lock().await;
            if let Some(budget_mib) = self.config.image_budget_mib {
                self.make_room(template, size, budget_mib).await?;
            }
            self.run_host("sh", &["-c", ": > \"$1\"", "sh", &marker])
                .await?;
            held.report(&file, 0, size);
        }
        tracing::info!(host = %self.name, template, bytes = size, store = %store,
            "pulling a template");
        let copied = self
            .send(source, &archive, |done| {
                sent.store(done, Ordering::SeqCst);
                held.report(&file, done, size);
            })
            .await?;
        copied
            .verify()
            .map_err(|e| self.request_err(format!("pulling template {template}: {e}")))?;
        // The copy on the Mac, checked where it will be used.
        let out = self
            .run_bytes_within("shasum", &["-a", "256", &archive], long)
            .await
            .map_err(|e| e.into_host(&self.name))?;
        let out = String::from_utf8_lossy(&out);
        let got = out.split_whitespace().next().and_then(Sha256Digest::parse);
        if got != Some(digest) {
            return Err(self.host_err(format!(
                "the copy of {file} in {dir} does not match its digest {digest}: `shasum -a 256` \
                 gave {}",
                quote(out.trim())
            )));
        }
        let listing = self
            .run_bytes_within("tar", &["-tf", &archive], long)
            .await
            .map_err(|e| e.into_host(&self.name))?;
        check_listing(template, &String::from_utf8_lossy(&listing))
            .map_err(|m| self.request_err(format!("pulling template {template}: {m}")))?;
        self.run_bytes_within(
            "sh",
            &[
                "-c",
                "tar -xf \"$1\" -C \"$2\" && rm -f \"$1\"",
                "sh",
                &archive,
                dir,
            ],
            long,
        )
        .await
        .map_err(|e| e.into_host(&self.name))?;
        let config = self
            .run_host("cat", &[&format!("{bundle}/config.pvs")])
            .await?;
        check_config(template, &config)
            .map_err(|m| self.request_err(format!("pulling template {template}: {m}")))?;
        registering.store(true, Ordering::SeqCst);
        match self
            .run_bytes_within("prlctl", &["register", &bundle], long)
            .await
        {
            Ok(_) => {}
            // prlctl answered no: nothing was registered, so the bundle may go.
            Err(e @ RunError::Exit { .. }) => {
                registering.store(false, Ordering::SeqCst);
                return Err(e.into_host(&self.name));
            }
            // Lost on the way: it may have been registered all the same.
            Err(e) => return Err(e.into_host(&self.name)),
        }
        if !self.list_templates().await?.iter().any(|t| t == template) {
            return Err(self.host_err(format!(
                "`prlctl register {bundle}` succeeded, but prlctl lists no template {template}"
            )));
        }
        self.run_host("rm", &["-f", &marker]).await?;
        tracing::info!(host = %self.name, template, bytes = size,
            "pulled a template, digest verified");
        Ok(())
    }

    /// Makes the template directory if need be and says what it holds of `template`.
    pub(super) async fn leftovers(&self, template: &str) -> Result<Leftovers, DriverError> {
        let script = "mkdir -p \"$1\" && cd \"$1\" && pwd -P || exit 1; \
                      [ -e \"$2$3$4\" ] && echo marker; [ -e \"$2$5\" ] && echo bundle; exit 0";
        let out = self
            .run_in_template_dir(script, &[template, ARCHIVE_EXT, PULLING_EXT, BUNDLE_EXT])
            .await?;
        parse_leftovers(&out).ok_or_else(|| {
            self.host_err(format!(
                "looking into template_dir {}: expected its path and what it holds, got {}",
                self.config.template_dir,
                quote(out.trim())
            ))
        })
    }

    /// Removes a pull's archive and bundle of `template` in `dir`, and its last-use mark, then
    /// its marker (last, so that a cleanup cut short is recognised too).
    pub(super) async fn remove_leftovers_or_fail(
        &self,
        dir: &str,
        template: &str,
    ) -> Result<(), DriverError> {
        let script = "cd \"$1\" && rm -rf \"$2$3\" \"$2$4\" \"$2$3$6\" && rm -f \"$2$4$5\"";
        self.run_bytes_within(
            "sh",
            &[
                "-c",
                script,
                "sh",
                dir,
                template,
                BUNDLE_EXT,
                ARCHIVE_EXT,
                PULLING_EXT,
                USED_EXT,
            ],
            Duration::from_millis(self.config.pull_timeout_ms),
        )
        .await
        .map(drop)
        .map_err(|e| e.into_host(&self.name))
    }

    /// [`Self::remove_leftovers_or_fail`] after a failed pull: best effort, as the pull's own
    /// error is what the caller reports, and the marker makes the next pull finish the job.
    async fn remove_leftovers(&self, dir: &str, template: &str) {
        if let Err(error) = self.remove_leftovers_or_fail(dir, template).await {
            tracing::warn!(host = %self.name, template, %error,
                "cannot remove what a failed pull left; the next pull will");
        }
    }

    /// Streams `source` into `path` on the Mac through one SSH session (`cat > path`), calling
    /// `progress` with the bytes sent so far; gives the source back to be verified.
    async fn send(
        &self,
        source: ImageSource,
        path: &str,
        progress: impl Fn(u64),
    ) -> Result<ImageSource, DriverError> {
        let file = source.file.clone();
        // The store is read on a blocking thread (a file or an HTTP body) a few chunks ahead.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(CHUNKS_AHEAD);
        let reader = tokio::task::spawn_blocking(move || {
            let mut source = source;
            loop {
                let mut chunk = vec![0u8; PULL_CHUNK];
                match source.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
            source
        });
        let session: Arc<Session> = self.session().await?;
        let command = format!("cat > {path}");
        let mut cmd = Session::to_command(session.clone(), "sh");
        cmd.args(["-c", "cat > \"$1\"", "sh", path])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn().await {
            Ok(child) => child,
            Err(e) => {
                self.reset(&session).await;
                return Err(self.transient(format!(
                    "starting `{command}`: the ssh connection to {} failed ({})",
                    self.config.destination(),
                    error_chain(&e)
                )));
            }
        };
        let Some(mut stdin) = child.stdin().take() else {
            return Err(self.host_err(format!("`{command}` has no standard input")));
        };
        let mut done = 0u64;
        let mut failed = None;
        progress(0);
        while let Some(chunk) = rx.recv().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    failed =
                        Some(self.transient(format!("reading {file} from the image store: {e}")));
                    break;
                }
            };
            if let Err(e) = stdin.write_all(&chunk).await {
                failed = Some(self.transient(format!(
                    "copying {file} to the host stopped at {done} bytes: {e}"
                )));
                break;
            }
            done += chunk.len() as u64;
            progress(done);
        }
        // The reader stops at its next chunk once nobody takes them.
        drop(rx);
        let _ = stdin.shutdown().await;
        drop(stdin);
        let output = child.wait_with_output().await;
        // What the Mac said (a full disk, a missing directory) explains more than a broken pipe.
        self.judge(&session, command, output)
            .await
            .map_err(|e| e.into_host(&self.name))?;
        if let Some(e) = failed {
            return Err(e);
        }
        reader
            .await
            .map_err(|e| self.host_err(format!("reading {file} failed unexpectedly: {e}")))
    }
}

/// Reads what [`ParallelsHost::leftovers`] prints: the directory, then `marker` and `bundle`
/// for what is there.
fn parse_leftovers(out: &str) -> Option<Leftovers> {
    let mut lines = out.lines();
    let dir = lines.next()?.to_owned();
    if !dir.starts_with('/') {
        return None;
    }
    let mut found = Leftovers {
        dir,
        marker: false,
        bundle: false,
    };
    for line in lines {
        match line.trim() {
            "marker" => found.marker = true,
            "bundle" => found.bundle = true,
            "" => {}
            _ => return None,
        }
    }
    Some(found)
}

/// Checks `tar -tf`'s listing of template `template`'s archive: everything in `NAME.pvm/`.
fn check_listing(template: &str, listing: &str) -> Result<(), String> {
    let bundle = format!("{template}{BUNDLE_EXT}");
    let mut any = false;
    for entry in listing.lines().filter(|l| !l.is_empty()) {
        let entry = entry.strip_prefix("./").unwrap_or(entry);
        let inside = entry.trim_end_matches('/') == bundle
            || entry
                .strip_prefix(&format!("{bundle}/"))
                .is_some_and(|rest| !rest.split('/').any(|part| part == ".."));
        if !inside {
            return Err(format!(
                "{template}{ARCHIVE_EXT} holds {}, outside {bundle}/: the archive must hold the \
                 bundle alone (`tar -cf {template}{ARCHIVE_EXT} {bundle}`)",
                quote(entry)
            ));
        }
        any = true;
    }
    if !any {
        return Err(format!("{template}{ARCHIVE_EXT} is an empty archive"));
    }
    Ok(())
}

/// Checks the bundle's `config.pvs`: the VM is called `template` and is a template, so that
/// registering it gives the template the recipe names.
fn check_config(template: &str, config: &str) -> Result<(), String> {
    let bundle = format!("{template}{BUNDLE_EXT}");
    let name = element(config, "VmName")
        .ok_or_else(|| format!("{bundle}/config.pvs has no <VmName>: not a Parallels bundle"))?;
    if name != template {
        return Err(format!(
            "{bundle}/config.pvs names the vm {name:?}, not {template:?}: the bundle must be \
             the template it is named after"
        ));
    }
    if element(config, "IsTemplate").map(str::trim) != Some("1") {
        return Err(format!(
            "{bundle}/config.pvs is a vm, not a template (<IsTemplate> is not 1): make one with \
             `prlctl clone VM --name {template} --template`"
        ));
    }
    Ok(())
}

/// The text of the first `<tag>` element of an XML document.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_parse() {
        assert_eq!(
            parse_leftovers("/Users/ci/Parallels/t\nmarker\nbundle\n"),
            Some(Leftovers {
                dir: "/Users/ci/Parallels/t".into(),
                marker: true,
                bundle: true
            })
        );
        assert_eq!(
            parse_leftovers("/d\n").map(|l| (l.marker, l.bundle)),
            Some((false, false))
        );
        assert_eq!(parse_leftovers(""), None);
        assert_eq!(parse_leftovers("relative\n"), None);
        assert_eq!(parse_leftovers("/d\nsurprise\n"), None);
    }

    #[test]
    fn archives_hold_the_bundle_alone() {
        let ok = "macos-16.pvm/\nmacos-16.pvm/config.pvs\nmacos-16.pvm/harddisk.hdd/x\n";
        assert_eq!(check_listing("macos-16", ok), Ok(()));
        assert_eq!(
            check_listing("macos-16", "./macos-16.pvm/\n./macos-16.pvm/config.pvs\n"),
            Ok(())
        );
        let e = check_listing("macos-16", "macos-16.pvm/\nother.pvm/config.pvs\n").unwrap_err();
        assert!(e.contains("\"other.pvm/config.pvs\""), "{e}");
        let e = check_listing("macos-16", "macos-16.pvm/../../etc/x\n").unwrap_err();
        assert!(e.contains("outside macos-16.pvm/"), "{e}");
        assert!(check_listing("macos-16", "macos-16.pvmx/a\n").is_err());
        assert!(check_listing("macos-16", "").unwrap_err().contains("empty"));
    }

    #[test]
    fn bundles_must_be_the_template_they_are_named_after() {
        let config = |name: &str, template: &str| {
            format!(
                "<ParallelsVirtualMachine><Identification><VmUuid>{{1}}</VmUuid>\
                 <VmName>{name}</VmName></Identification><Settings><General>\
                 <IsTemplate>{template}</IsTemplate></General></Settings>\
                 </ParallelsVirtualMachine>"
            )
        };
        assert_eq!(check_config("macos-16", &config("macos-16", "1")), Ok(()));
        let e = check_config("macos-16", &config("macOS 16", "1")).unwrap_err();
        assert!(e.contains("\"macOS 16\""), "{e}");
        let e = check_config("macos-16", &config("macos-16", "0")).unwrap_err();
        assert!(e.contains("not a template"), "{e}");
        let e = check_config("macos-16", "<x/>").unwrap_err();
        assert!(e.contains("no <VmName>"), "{e}");
    }
}
