//! Evictions of pulled templates from a Mac, and what keeps a template from being evicted.
//!
//! A template may go only when nothing uses it: no VM is a linked clone of it, no pull of it
//! runs, and no provisioning or push of this driver is about to use it. Parallels does not
//! report which template a linked clone was made from, so berth records it in the clone's
//! description (`prlctl set berth-vmN --description "berth: linked clone of NAME"`), and counts
//! a berth VM without that record as a user of every template (it may be a clone of any).
//!
//! Only templates berth pulled are evicted: their bundle is `NAME.pvm` in `template_dir`. The
//! eviction writes the pull's marker `NAME.pvm.tar.pulling` first, then unregisters the
//! template (`prlctl unregister NAME`, which leaves the bundle on disk) and removes the bundle,
//! the marker last. One cut short leaves the marker, so the next pull of the template removes
//! what is left, as it does after a pull cut short.
//!
//! With `image_budget_mib`, a pull first makes room: it counts what each template in
//! `template_dir` takes on disk (`du -sk` of its bundle, and of its archive while one is
//! pulled), when it was last used (the modification time of `NAME.pvm.used`, touched at each
//! clone, else of the bundle) and whether anything uses it, then evicts the least recently used
//! unused ones as [`crate::images::evictions`] chooses, or fails naming the budget and what is
//! in use, evicting nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::pull::BUNDLE_EXT;
use super::{ARCHIVE_EXT, PULLING_EXT, ParallelsHost, PrlInfo, is_plain_name, parse_info, quote};
use crate::images::{HeldImage, Holdings, evictions};
use crate::{DriverError, parse_vm_name};

/// The suffix of the file whose modification time says when a template was last cloned.
pub(super) const USED_EXT: &str = ".used";

const MIB: u64 = 1024 * 1024;

/// How the description of a VM berth cloned begins; the template's name follows.
const CLONE_OF: &str = "berth: linked clone of ";

/// The description berth gives a linked clone of `template`.
pub(super) fn clone_description(template: &str) -> String {
    format!("{CLONE_OF}{template}")
}

/// The template a VM was cloned from, as its description records it.
fn cloned_from(description: &str) -> Option<&str> {
    description.strip_prefix(CLONE_OF)
}

/// What of this driver uses templates now, by template name.
#[derive(Debug, Default)]
pub(super) struct TemplateUses {
    /// Provisionings and pulls that may clone or register the template, counted by what they
    /// are (`a provisioning`, `a pull`).
    using: BTreeMap<(String, &'static str), usize>,
    /// Templates being evicted.
    evicting: BTreeSet<String>,
}

/// A use of a template, ended when dropped.
pub(super) struct TemplateUse<'a> {
    host: &'a ParallelsHost,
    key: (String, &'static str),
}

impl Drop for TemplateUse<'_> {
    fn drop(&mut self) {
        let mut uses = self.host.template_uses();
        if let Some(n) = uses.using.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                uses.using.remove(&self.key);
            }
        }
    }
}

/// An eviction of a template, ended when dropped.
struct Evicting<'a> {
    host: &'a ParallelsHost,
    template: String,
}

impl Drop for Evicting<'_> {
    fn drop(&mut self) {
        self.host.template_uses().evicting.remove(&self.template);
    }
}

impl ParallelsHost {
    /// Whether a probe should count the templates for the board now (see `CENSUS_REFRESH`).
    pub(super) fn census_is_due(&self) -> bool {
        let due = *self.census_due.lock().unwrap_or_else(|e| e.into_inner());
        due.is_none_or(|at| Instant::now() >= at)
    }

    /// When the next probe's count is due; `None`: at the next probe.
    pub(super) fn set_census_due(&self, at: Option<Instant>) {
        *self.census_due.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    fn template_uses(&self) -> std::sync::MutexGuard<'_, TemplateUses> {
        // Plain counts; those left by a panicking thread are still usable.
        self.template_uses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `template` as used by `what` (`a provisioning`, `a pull`) until the answer is
    /// dropped, so that no eviction takes it meanwhile. Refused while it is being evicted: a
    /// try after the eviction pulls it again.
    pub(super) fn use_template(
        &self,
        template: &str,
        what: &'static str,
    ) -> Result<TemplateUse<'_>, DriverError> {
        let mut uses = self.template_uses();
        if uses.evicting.contains(template) {
            return Err(self.transient(format!(
                "template {template} is being evicted from this host; try again once it is gone"
            )));
        }
        let key = (template.to_owned(), what);
        *uses.using.entry(key.clone()).or_default() += 1;
        Ok(TemplateUse { host: self, key })
    }

    /// Marks `template` as being evicted, unless something of this driver uses it.
    fn start_evicting(&self, template: &str) -> Result<Evicting<'_>, DriverError> {
        let mut uses = self.template_uses();
        let mut users: Vec<String> = uses
            .using
            .keys()
            .filter(|(t, _)| t == template)
            .map(|(_, what)| (*what).to_owned())
            .collect();
        if self.pulls.progress(&self.name, template).is_some()
            && !users.iter().any(|u| u == "a pull")
        {
            users.push("a pull".to_owned());
        }
        if uses.evicting.contains(template) {
            users.push("another eviction".to_owned());
        }
        if !users.is_empty() {
            return Err(self.in_use(template, users));
        }
        uses.evicting.insert(template.to_owned());
        Ok(Evicting {
            host: self,
            template: template.to_owned(),
        })
    }

    fn in_use(&self, template: &str, users: Vec<String>) -> DriverError {
        DriverError::ImageInUse {
            host: self.name.clone(),
            image: template.to_owned(),
            users,
        }
    }

    /// See [`crate::Driver::evict_image`].
    pub(super) async fn evict(&self, template: &str) -> Result<(), DriverError> {
        if !is_plain_name(template) {
            return Err(self.request_err(format!(
                "template name {template:?} may hold only letters, digits, spaces, `-`, `_` and `.`"
            )));
        }
        let _evicting = self.start_evicting(template)?;
        if !self.list_templates().await?.iter().any(|t| t == template) {
            return Err(DriverError::NoSuchImage {
                host: self.name.clone(),
                image: template.to_owned(),
            });
        }
        let users = self.clones_of(template).await?;
        if !users.is_empty() {
            return Err(self.in_use(template, users));
        }
        let bundle = self.template_bundle(template).await?;
        let dir = self.leftovers(template).await?.dir;
        if bundle != format!("{dir}/{template}{BUNDLE_EXT}") {
            return Err(self.request_err(format!(
                "template {template} is not one berth pulled: its bundle is {bundle}, not in \
                 template_dir {dir}; berth evicts only the templates it pulls (`prlctl delete \
                 {template}` removes it)"
            )));
        }
        let marker = format!("{dir}/{template}{ARCHIVE_EXT}{PULLING_EXT}");
        self.run_host("sh", &["-c", ": > \"$1\"", "sh", &marker])
            .await?;
        self.run_host("prlctl", &["unregister", template]).await?;
        let removed = self.remove_leftovers_or_fail(&dir, template).await;
        // Whatever was removed, the board counts it again at the next probe.
        self.set_census_due(None);
        removed?;
        tracing::info!(host = %self.name, template, "evicted a template");
        Ok(())
    }

    /// The VMs that are, or may be, linked clones of `template`: those whose description says
    /// so, and berth's VMs that record no template.
    async fn clones_of(&self, template: &str) -> Result<Vec<String>, DriverError> {
        Ok(clone_users(&self.all_info().await?, template))
    }

    /// `prlctl list --all --info --json`, read.
    async fn all_info(&self) -> Result<Vec<PrlInfo>, DriverError> {
        let out = self
            .run_host("prlctl", &["list", "--all", "--info", "--json"])
            .await?;
        parse_info(&out)
            .map_err(|m| self.host_err(format!("`prlctl list --all --info --json`: {m}")))
    }

    /// Every template in `template_dir` (but `skip`, the one being pulled) with what it takes
    /// on disk, its last use and what uses it (empty: nothing); see the module's comment.
    async fn census(&self, skip: Option<&str>) -> Result<Vec<Counted>, DriverError> {
        let script = "cd \"$1\" 2>/dev/null || exit 0; \
                      for f in *\"$2\" *\"$3\" *\"$3$4\" *\"$2$5\"; do \
                      [ -e \"$f\" ] || continue; \
                      k=$(du -sk \"$f\" | cut -f1) && \
                      t=$(perl -e 'print((stat shift)[9])' \"$f\") || exit 1; \
                      printf '%s\\t%s\\t%s\\n' \"$k\" \"$t\" \"$f\"; done";
        let out = self
            .run_in_template_dir(script, &[BUNDLE_EXT, ARCHIVE_EXT, PULLING_EXT, USED_EXT])
            .await?;
        let files = parse_census(&out).ok_or_else(|| {
            self.host_err(format!(
                "counting the templates in template_dir {}: expected lines of KiB, time and \
                 file, got {}",
                self.config.template_dir,
                quote(out.trim())
            ))
        })?;
        let registered: BTreeSet<String> = self.list_templates().await?.into_iter().collect();
        let infos = self.all_info().await?;
        let (using, evicting) = {
            let uses = self.template_uses();
            (uses.using.clone(), uses.evicting.clone())
        };
        let mut counted = Vec::new();
        for (name, f) in files {
            if Some(name.as_str()) == skip {
                continue;
            }
            let mut users = clone_users(&infos, &name);
            users.extend(
                using
                    .keys()
                    .filter(|(t, _)| *t == name)
                    .map(|(_, what)| (*what).to_owned()),
            );
            let mut bytes = f.kib.saturating_mul(1024);
            if let Some(p) = self.pulls.progress(&self.name, &name) {
                // A pull counts at the size it will have.
                bytes = bytes.max(p.total_bytes);
                if !users.iter().any(|u| u == "a pull") {
                    users.push("a pull".to_owned());
                }
            }
            if evicting.contains(&name) {
                users.push("an eviction".to_owned());
            }
            let registered = registered.contains(&name);
            // A bundle without berth's marker that Parallels does not know is not berth's to
            // remove (a pull refuses to replace it too).
            let foreign = !registered && !f.marker;
            counted.push(Counted {
                held: HeldImage {
                    name,
                    bytes,
                    last_used_s: f.used_s.or(f.bundle_s).or(f.archive_s).unwrap_or(0),
                    in_use: !users.is_empty() || foreign,
                },
                registered,
            });
        }
        Ok(counted)
    }

    /// What [`Self::census`] finds, as the daemon's board keeps it.
    pub(super) async fn holdings(&self) -> Result<Holdings, DriverError> {
        Ok(Holdings {
            images: self
                .census(None)
                .await?
                .into_iter()
                .map(|c| c.held)
                .collect(),
            budget_bytes: self.config.image_budget_mib.map(|m| m.saturating_mul(MIB)),
        })
    }

    /// Evicts the least recently used templates that nothing uses until `template` (`bytes`)
    /// fits within `budget_mib` beside the rest; fails, evicting nothing, when it cannot fit.
    pub(super) async fn make_room(
        &self,
        template: &str,
        bytes: u64,
        budget_mib: u64,
    ) -> Result<(), DriverError> {
        let census = self.census(Some(template)).await?;
        let held: Vec<HeldImage> = census.iter().map(|c| c.held.clone()).collect();
        let evict =
            evictions(&held, template, bytes, budget_mib.saturating_mul(MIB)).map_err(|e| {
                self.host_err(format!(
                    "pulling template {template} into {}: {e}",
                    self.config.template_dir
                ))
            })?;
        for name in evict {
            let registered = census.iter().any(|c| c.held.name == name && c.registered);
            if registered {
                self.evict(&name).await?;
            } else {
                // What a pull or an eviction cut short left, beside its marker.
                let dir = self.leftovers(&name).await?.dir;
                self.remove_leftovers_or_fail(&dir, &name).await?;
            }
            tracing::info!(host = %self.name, template = %name, pulling = template, budget_mib,
                "evicted an unused template to make room");
        }
        Ok(())
    }

    /// Makes `NAME.pvm.used` anew beside a pulled template's bundle: it was cloned now. Only
    /// eviction's order depends on it, so a failure is logged, not returned.
    pub(super) async fn mark_used(&self, template: &str) {
        let script = "cd \"$1\" && if [ -d \"$2$3\" ]; then touch \"$2$3$4\"; fi";
        if let Err(error) = self
            .run_in_template_dir(script, &[template, BUNDLE_EXT, USED_EXT])
            .await
        {
            tracing::debug!(host = %self.name, template, %error, "marking a template used failed");
        }
    }
    /// Where template `template`'s bundle is, as `prlctl list NAME --info --json` says.
    async fn template_bundle(&self, template: &str) -> Result<String, DriverError> {
        let out = self
            .run_host("prlctl", &["list", template, "--info", "--json"])
            .await?;
        let command = format!("`prlctl list {template} --info --json`");
        let infos = parse_info(&out).map_err(|m| self.host_err(format!("{command}: {m}")))?;
        let home = infos
            .iter()
            .find(|i| i.name == template)
            .and_then(|i| i.home.as_deref())
            .ok_or_else(|| {
                self.host_err(format!(
                    "{command} did not say where {template}'s bundle is: {}",
                    quote(out.trim())
                ))
            })?;
        // `Home path` names the bundle's config.pvs; older versions' `Home`, the bundle.
        let home = home.trim_end_matches('/');
        let bundle = home.strip_suffix("/config.pvs").unwrap_or(home);
        Ok(bundle.trim_end_matches('/').to_owned())
    }
}

/// One template in `template_dir`, as a pull's eviction sees it.
#[derive(Debug)]
pub(super) struct Counted {
    pub(super) held: HeldImage,
    /// Whether Parallels lists it as a template (else it is what a cut pull or eviction left).
    registered: bool,
}

/// What the census script found of one template's files.
#[derive(Debug, Default, PartialEq, Eq)]
struct Files {
    /// KiB its bundle and archive take.
    kib: u64,
    /// Modification times (seconds since the epoch) of its `.used` file, bundle and archive.
    used_s: Option<u64>,
    bundle_s: Option<u64>,
    archive_s: Option<u64>,
    /// A pull's (or an eviction's) marker is there.
    marker: bool,
}

/// Reads the census script's lines (`KIB<TAB>MTIME<TAB>FILE`) into each template's files, by
/// name. Files whose name is not a template's are left out.
fn parse_census(out: &str) -> Option<BTreeMap<String, Files>> {
    let mut found: BTreeMap<String, Files> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, '\t');
        let kib: u64 = parts.next()?.trim().parse().ok()?;
        let mtime: u64 = parts.next()?.trim().parse().ok()?;
        let file = parts.next()?;
        let marker_ext = format!("{ARCHIVE_EXT}{PULLING_EXT}");
        let used_ext = format!("{BUNDLE_EXT}{USED_EXT}");
        let (name, kind) = if let Some(n) = file.strip_suffix(&marker_ext) {
            (n, 'm')
        } else if let Some(n) = file.strip_suffix(&used_ext) {
            (n, 'u')
        } else if let Some(n) = file.strip_suffix(ARCHIVE_EXT) {
            (n, 'a')
        } else if let Some(n) = file.strip_suffix(BUNDLE_EXT) {
            (n, 'b')
        } else {
            return None;
        };
        if !is_plain_name(name) {
            continue;
        }
        let f = found.entry(name.to_owned()).or_default();
        match kind {
            'm' => f.marker = true,
            'u' => f.used_s = Some(mtime),
            'a' => {
                f.kib = f.kib.saturating_add(kib);
                f.archive_s = Some(mtime);
            }
            _ => {
                f.kib = f.kib.saturating_add(kib);
                f.bundle_s = Some(mtime);
            }
        }
    }
    Some(found)
}

/// The VMs among `infos` that are, or may be, linked clones of `template`.
fn clone_users(infos: &[PrlInfo], template: &str) -> Vec<String> {
    let mut users = Vec::new();
    for info in infos.iter().filter(|i| i.name != template) {
        match info.description.as_deref().and_then(cloned_from) {
            Some(t) if t == template => users.push(format!("vm {}", info.name)),
            Some(_) => {}
            None if parse_vm_name(&info.name).is_some() => {
                users.push(format!("vm {} (its template is not recorded)", info.name));
            }
            None => {}
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_descriptions_name_the_template() {
        assert_eq!(
            cloned_from(&clone_description("macOS 14 template")),
            Some("macOS 14 template")
        );
        assert_eq!(cloned_from(""), None);
        assert_eq!(cloned_from("someone's notes"), None);
    }

    #[test]
    fn the_census_reads_each_templates_files() {
        let out = "12\t100\tmacos-15.pvm\n\
                   0\t300\tmacos-15.pvm.used\n\
                   5\t200\tmacos-16.pvm.tar\n\
                   0\t200\tmacos-16.pvm.tar.pulling\n\
                   7\t150\tmacos-16.pvm\n";
        let found = parse_census(out).unwrap();
        assert_eq!(
            found["macos-15"],
            Files {
                kib: 12,
                used_s: Some(300),
                bundle_s: Some(100),
                archive_s: None,
                marker: false
            }
        );
        assert_eq!(
            found["macos-16"],
            Files {
                kib: 12,
                used_s: None,
                bundle_s: Some(150),
                archive_s: Some(200),
                marker: true
            }
        );
        assert_eq!(parse_census("").unwrap(), BTreeMap::new());
        assert_eq!(parse_census("x\t1\ta.pvm\n"), None);
        assert_eq!(parse_census("1\t1\tnotes.txt\n"), None);
        // A name berth never gives a template is left out.
        assert_eq!(parse_census("1\t1\t-x.pvm\n").unwrap(), BTreeMap::new());
    }
}
