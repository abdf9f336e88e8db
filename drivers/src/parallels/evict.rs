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

use std::collections::{BTreeMap, BTreeSet};

use super::pull::BUNDLE_EXT;
use super::{ARCHIVE_EXT, PULLING_EXT, ParallelsHost, is_plain_name, parse_info, quote};
use crate::{DriverError, parse_vm_name};

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
        self.remove_leftovers_or_fail(&dir, template).await?;
        tracing::info!(host = %self.name, template, "evicted a template");
        Ok(())
    }

    /// The VMs that are, or may be, linked clones of `template`: those whose description says
    /// so, and berth's VMs that record no template.
    async fn clones_of(&self, template: &str) -> Result<Vec<String>, DriverError> {
        let out = self
            .run_host("prlctl", &["list", "--all", "--info", "--json"])
            .await?;
        let infos = parse_info(&out)
            .map_err(|m| self.host_err(format!("`prlctl list --all --info --json`: {m}")))?;
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
        Ok(users)
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
}
