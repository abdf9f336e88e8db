//! The image routes: base images as the image store, the templates and the hosts know them
//! (`GET /v1/images`, `GET /v1/images/{name}`), pulls ahead of demand
//! (`POST /v1/images/{name}/push`) and evictions (`POST /v1/images/{name}/evict`); and what
//! host rows say of their images. Pulls and evictions are the drivers' (`Driver::pull_image`,
//! `Driver::evict_image`); these routes check the request, refuse what cannot be done naming
//! why, and ask for a probe afterwards so that the scheduler learns what the host holds.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use berth_api as api;
use berth_drivers::DriverError;
use berth_drivers::images::{IMAGE_FILE_EXT, ImageStore, RunningPull};
use berth_drivers::parallels::ARCHIVE_EXT;

use super::{
    ApiError, ApiResult, AppState, Operator, Reader, ok_json, parse, query, unexpected, write_audit,
};
use crate::control::{Answer, ImageHost, Query};

/// The most hosts one push names.
const PUSH_HOSTS_MAX: usize = 1000;

/// Adds to a host row what its driver counted of its images and the pulls running to it.
pub(super) fn add_to_host(state: &AppState, row: &mut api::HostRow) {
    if let Some(held) = state.pulls.held(&row.name) {
        for image in &mut row.images {
            if let Some(h) = held.images.iter().find(|h| h.name == image.name) {
                image.bytes = Some(h.bytes);
                image.last_used_ms = Some(h.last_used_s.saturating_mul(1000));
                image.in_use = Some(h.in_use);
            }
        }
        row.image_disk = held.budget_bytes.map(|budget_bytes| api::ImageDisk {
            used_bytes: held.used_bytes(),
            budget_bytes,
        });
    }
    row.pulls = state
        .pulls
        .running()
        .iter()
        .filter(|p| p.host == row.name)
        .map(pull_row)
        .collect();
}

fn pull_row(p: &RunningPull) -> api::ImagePull {
    api::ImagePull {
        host: p.host.clone(),
        image: p.image.clone(),
        file: p.progress.file.clone(),
        done_bytes: p.progress.done_bytes,
        total_bytes: p.progress.total_bytes,
        percent: p.progress.percent(),
    }
}

async fn image_hosts(state: &AppState) -> Result<Vec<ImageHost>, ApiError> {
    match query(state, Query::ImageHosts).await? {
        Answer::ImageHosts(hosts) => Ok(hosts),
        _ => Err(unexpected()),
    }
}

/// The image files of the daemon's store, by image name (libvirt's `NAME.qcow2`, Parallels'
/// `NAME.pvm.tar`); empty without a store or from one that cannot list (HTTP).
async fn store_images(store: Option<ImageStore>) -> Result<Vec<String>, ApiError> {
    let Some(store) = store else {
        return Ok(Vec::new());
    };
    let listed = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|_| ApiError::new(500, "listing the image store failed unexpectedly"))?
        .map_err(|e| ApiError::new(502, e.to_string()))?;
    Ok(listed
        .unwrap_or_default()
        .iter()
        .filter_map(|file| {
            file.strip_suffix(IMAGE_FILE_EXT)
                .or_else(|| file.strip_suffix(ARCHIVE_EXT))
        })
        .map(str::to_owned)
        .collect())
}

/// What the store says of image `name`: digest and size, or why it cannot say. The store
/// holds a libvirt image as `NAME.qcow2` and a Parallels template as `NAME.pvm.tar`; the
/// first is asked first, and its error is the one told when neither is there.
async fn describe(store: Option<ImageStore>, name: &str) -> Result<(String, u64), String> {
    let Some(store) = store else {
        return Err("no image store is set ([drivers] image_store)".to_owned());
    };
    let (image, archive) = (
        format!("{name}{IMAGE_FILE_EXT}"),
        format!("{name}{ARCHIVE_EXT}"),
    );
    tokio::task::spawn_blocking(move || {
        store
            .describe(&image)
            .or_else(|e| store.describe(&archive).map_err(|_| e))
    })
    .await
    .map_err(|_| "describing the image failed unexpectedly".to_owned())?
    .map(|(bytes, digest)| (digest.to_string(), bytes))
    .map_err(|e| e.to_string())
}

/// Image `name` as every source knows it.
async fn image_row(
    state: &AppState,
    hosts: &[ImageHost],
    running: &[RunningPull],
    name: &str,
) -> api::ImageRow {
    let (digest, bytes, store_error) = match describe(state.image_store.clone(), name).await {
        Ok((digest, bytes)) => (Some(digest), Some(bytes), None),
        Err(e) => (None, None, Some(e)),
    };
    let mut templates: Vec<String> = state
        .templates
        .iter()
        .filter(|t| t.base_image.as_deref().unwrap_or(&t.name) == name)
        .map(|t| t.name.clone())
        .collect();
    templates.sort();
    let holders = hosts
        .iter()
        .filter(|h| h.images.iter().any(|i| i == name))
        .map(|h| {
            let held = state
                .pulls
                .held(&h.name)
                .and_then(|held| held.images.into_iter().find(|i| i.name == name));
            api::ImageHolder {
                host: h.name.clone(),
                bytes: held.as_ref().map(|i| i.bytes),
                last_used_ms: held.as_ref().map(|i| i.last_used_s.saturating_mul(1000)),
                in_use: held.as_ref().map(|i| i.in_use),
                vms: h.vms_by_image.get(name).cloned().unwrap_or_default(),
            }
        })
        .collect();
    api::ImageRow {
        name: name.to_owned(),
        digest,
        bytes,
        store_error,
        templates,
        hosts: holders,
        pulls: running
            .iter()
            .filter(|p| p.image == name)
            .map(pull_row)
            .collect(),
    }
}

/// Every image name known to the store, a template, a host or a running pull.
async fn known_names(
    state: &AppState,
    hosts: &[ImageHost],
    running: &[RunningPull],
) -> Result<BTreeSet<String>, ApiError> {
    let mut names: BTreeSet<String> = store_images(state.image_store.clone())
        .await?
        .into_iter()
        .collect();
    names.extend(
        state
            .templates
            .iter()
            .map(|t| t.base_image.clone().unwrap_or_else(|| t.name.clone())),
    );
    names.extend(hosts.iter().flat_map(|h| h.images.iter().cloned()));
    names.extend(running.iter().map(|p| p.image.clone()));
    Ok(names)
}

/// Image `name` if anything knows it; a 404 naming it and what is known otherwise.
async fn known_image(
    state: &AppState,
    hosts: &[ImageHost],
    running: &[RunningPull],
    name: &str,
) -> Result<api::ImageRow, ApiError> {
    let names = known_names(state, hosts, running).await?;
    let row = image_row(state, hosts, running, name).await;
    if names.contains(name) || row.digest.is_some() {
        return Ok(row);
    }
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    Err(ApiError::field(
        404,
        "image",
        format!(
            "no image named `{name}`: no template names it, no host holds it and the image \
             store does not have it ({}); known images: {}",
            row.store_error.as_deref().unwrap_or("no store"),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ),
    ))
}

/// Every base image known to the image store, to a template or to a host, by name: its digest
/// and size from the store, the hosts holding it and its pulls running now.
#[utoipa::path(get, path = "/v1/images", tag = "hosts",
    responses((status = 200, body = api::ImageList)))]
pub(super) async fn list_images(Reader(_): Reader, State(state): State<AppState>) -> ApiResult {
    let hosts = image_hosts(&state).await?;
    let running = state.pulls.running();
    let mut images = Vec::new();
    for name in known_names(&state, &hosts, &running).await? {
        images.push(image_row(&state, &hosts, &running, &name).await);
    }
    let store = state.image_store.as_ref().map(ToString::to_string);
    ok_json(StatusCode::OK, &api::ImageList { store, images })
}

/// One base image: its digest and size from the store, the hosts holding it (with the VMs
/// made from it there) and its pulls running now.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "hosts",
    params(("name" = String, Path, description = "The image's name (`linux`)")),
    responses((status = 200, body = api::ImageRow)))]
pub(super) async fn get_image(
    Reader(_): Reader,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    let hosts = image_hosts(&state).await?;
    let running = state.pulls.running();
    let row = known_image(&state, &hosts, &running, &name).await?;
    ok_json(StatusCode::OK, &row)
}

/// The hosts a push goes to: those named, or every ready host of the driver named that keeps
/// an image store. Refuses unknown hosts, hosts without a store and offline hosts, naming each.
fn push_targets<'a>(
    hosts: &'a [ImageHost],
    body: &api::ImagePush,
) -> Result<Vec<&'a ImageHost>, ApiError> {
    let has_store = |h: &ImageHost| h.driver.as_ref().is_some_and(|d| d.image_store().is_some());
    match (&body.hosts[..], &body.driver) {
        ([], None) => Err(ApiError::field(
            400,
            "hosts",
            "name the hosts to push to (`hosts`), or a driver whose ready hosts all get it \
             (`driver`)",
        )),
        ([_, ..], Some(_)) => Err(ApiError::field(
            400,
            "driver",
            "name hosts or a driver, not both",
        )),
        (named, None) => {
            if named.len() > PUSH_HOSTS_MAX {
                return Err(ApiError::field(
                    400,
                    "hosts",
                    format!("name at most {PUSH_HOSTS_MAX} hosts, got {}", named.len()),
                ));
            }
            let unknown: Vec<&str> = named
                .iter()
                .filter(|n| !hosts.iter().any(|h| &h.name == *n))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(ApiError::field(
                    404,
                    "hosts",
                    format!("no host named {}", unknown.join(", ")),
                ));
            }
            let wanted: BTreeSet<&str> = named.iter().map(String::as_str).collect();
            let targets: Vec<&ImageHost> = hosts
                .iter()
                .filter(|h| wanted.contains(h.name.as_str()))
                .collect();
            let no_store: Vec<String> = targets
                .iter()
                .filter(|h| !has_store(h))
                .map(|h| format!("{} ({})", h.name, h.kind))
                .collect();
            if !no_store.is_empty() {
                return Err(ApiError::field(
                    409,
                    "hosts",
                    format!(
                        "these hosts take no pulls on request (no image store, or a driver \
                         that pulls only what a VM needs): {}",
                        no_store.join(", ")
                    ),
                ));
            }
            let offline: Vec<&str> = targets
                .iter()
                .filter(|h| h.state == api::HostState::Offline)
                .map(|h| h.name.as_str())
                .collect();
            if !offline.is_empty() {
                return Err(ApiError::field(
                    409,
                    "hosts",
                    format!("these hosts are offline: {}", offline.join(", ")),
                ));
            }
            Ok(targets)
        }
        ([], Some(kind)) => {
            if berth_sched::DriverKind::parse(kind).is_none() {
                return Err(ApiError::field(
                    400,
                    "driver",
                    format!("unknown driver `{kind}`: expected libvirt, parallels or sim"),
                ));
            }
            let targets: Vec<&ImageHost> = hosts
                .iter()
                .filter(|h| &h.kind == kind && h.state == api::HostState::Ready && has_store(h))
                .collect();
            if targets.is_empty() {
                return Err(ApiError::field(
                    409,
                    "driver",
                    format!("no ready {kind} host takes pulls on request"),
                ));
            }
            Ok(targets)
        }
    }
}

/// Pulls a base image ahead of demand onto the named hosts, or onto every ready host of a
/// driver that keeps an image store. Answers at once with the pulls started (follow them in
/// `GET /v1/images/{name}`) and the hosts that needed none; each pull ends in the
/// `image.pulled` or `image.pull_failed` hook and the pull metrics.
#[utoipa::path(post, path = "/v1/images/{name}/push", tag = "hosts", request_body = api::ImagePush,
    params(("name" = String, Path, description = "The image's name (`linux`)")),
    responses((status = 202, body = api::PushStarted)))]
pub(super) async fn push_image(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let b: api::ImagePush = parse(&body)?;
    let hosts = image_hosts(&state).await?;
    let running = state.pulls.running();
    known_image(&state, &hosts, &running, &name).await?;
    let targets = push_targets(&hosts, &b)?;
    let mut answer = api::PushStarted {
        image: name.clone(),
        started: Vec::new(),
        held: Vec::new(),
        pulling: Vec::new(),
    };
    let mut to_start = Vec::new();
    for h in targets {
        if h.images.contains(&name) {
            answer.held.push(h.name.clone());
        } else if state.pulls.progress(&h.name, &name).is_some() {
            answer.pulling.push(h.name.clone());
        } else if let Some(driver) = &h.driver {
            answer.started.push(h.name.clone());
            to_start.push((h.id, h.name.clone(), driver.clone()));
        }
    }
    let to = if answer.started.is_empty() {
        "no host (held or pulling already)".to_owned()
    } else {
        answer.started.join(", ")
    };
    write_audit(&state, actor, "image_push", format!("image {name} to {to}")).await?;
    for (id, host, driver) in to_start {
        let (state, image) = (state.clone(), name.clone());
        tokio::spawn(async move {
            match driver.pull_image(&image).await {
                Ok(()) => tracing::info!(%host, %image, "pushed a base image"),
                Err(error) => tracing::warn!(%host, %image, %error, "pushing a base image failed"),
            }
            // The host's images changed (or a partial copy went): probe it now.
            let _ = query(&state, Query::Kick(id)).await;
        });
    }
    ok_json(StatusCode::ACCEPTED, &answer)
}

/// A driver's refusal or failure to evict, as HTTP.
fn evict_failure(e: DriverError) -> ApiError {
    match e {
        // A request error: the driver will not evict that image there (a Parallels template
        // berth did not pull).
        DriverError::NoImageStore { .. }
        | DriverError::ImageInUse { .. }
        | DriverError::Request { .. } => ApiError::field(409, "image", e.to_string()),
        DriverError::NoSuchImage { .. } => ApiError::field(404, "image", e.to_string()),
        DriverError::Unsupported { .. } => ApiError::new(501, e.to_string()),
        other => ApiError::new(502, other.to_string()),
    }
}

/// Removes a base image from a host. Refused, naming what uses it, while a VM on the host is
/// made from it, an overlay is, a pull of it runs or a provisioning is about to use it.
#[utoipa::path(post, path = "/v1/images/{name}/evict", tag = "hosts", request_body = api::ImageEvict,
    params(("name" = String, Path, description = "The image's name (`linux`)")),
    responses((status = 200, body = api::ImageEvicted)))]
pub(super) async fn evict_image(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let b: api::ImageEvict = parse(&body)?;
    let hosts = image_hosts(&state).await?;
    let Some(host) = hosts.iter().find(|h| h.name == b.host) else {
        return Err(ApiError::field(
            404,
            "host",
            format!("no host named `{}`", b.host),
        ));
    };
    let Some(driver) = &host.driver else {
        return Err(ApiError::field(
            409,
            "host",
            format!("host {} has no driver running", host.name),
        ));
    };
    let mut users: Vec<String> = host
        .vms_by_image
        .get(&name)
        .into_iter()
        .flatten()
        .map(|vm| format!("vm {vm}"))
        .collect();
    if let Some(p) = state.pulls.progress(&host.name, &name) {
        users.push(format!("a pull ({}%)", p.percent()));
    }
    if !users.is_empty() {
        return Err(evict_failure(DriverError::ImageInUse {
            host: host.name.clone(),
            image: name,
            users,
        }));
    }
    driver.evict_image(&name).await.map_err(evict_failure)?;
    write_audit(
        &state,
        actor,
        "image_evict",
        format!("image {name} on {}", host.name),
    )
    .await?;
    query(&state, Query::Kick(host.id)).await?;
    let answer = api::ImageEvicted {
        image: name,
        host: host.name.clone(),
    };
    ok_json(StatusCode::OK, &answer)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn refused(hosts: &[ImageHost], push: &api::ImagePush) -> ApiError {
        match push_targets(hosts, push) {
            Ok(_) => panic!("the push was not refused"),
            Err(e) => e,
        }
    }

    fn host(name: &str, kind: &str, state: api::HostState) -> ImageHost {
        ImageHost {
            id: 1,
            name: name.into(),
            kind: kind.into(),
            state,
            driver: None,
            images: Vec::new(),
            vms_by_image: BTreeMap::new(),
        }
    }

    #[test]
    fn a_push_names_hosts_or_a_driver_and_refuses_what_it_cannot_reach() {
        let hosts = [
            host("mac1", "parallels", api::HostState::Ready),
            host("kvm1", "libvirt", api::HostState::Ready),
        ];
        let push = |hosts_named: &[&str], driver: Option<&str>| api::ImagePush {
            hosts: hosts_named.iter().map(|h| (*h).to_owned()).collect(),
            driver: driver.map(str::to_owned),
        };
        let e = refused(&hosts, &push(&[], None));
        assert_eq!((e.status, e.field.as_deref()), (400, Some("hosts")));
        let e = refused(&hosts, &push(&["kvm1"], Some("libvirt")));
        assert_eq!(e.field.as_deref(), Some("driver"));
        let e = refused(&hosts, &push(&["kvm1", "nope", "gone"], None));
        assert_eq!(
            (e.status, e.error.as_str()),
            (404, "no host named nope, gone")
        );
        // Neither host's driver runs here, so neither keeps a store.
        let e = refused(&hosts, &push(&["mac1", "kvm1"], None));
        assert_eq!(e.status, 409);
        assert!(
            e.error.contains("mac1 (parallels), kvm1 (libvirt)"),
            "{}",
            e.error
        );
        let e = refused(&hosts, &push(&[], Some("xen")));
        assert!(e.error.contains("unknown driver `xen`"), "{}", e.error);
        let e = refused(&hosts, &push(&[], Some("libvirt")));
        assert_eq!(e.error, "no ready libvirt host takes pulls on request");
    }
}
