//! Pulses: a bounded time series of what on-call looks at first (queue length, waiting and
//! running VMs, utilisation per host class), sampled from the control loop on a wall-clock
//! period, kept in SQLite for `[pulses] kept_hours`, and served at `GET /v1/pulses`, so a
//! console plots the last hour at once and across restarts of either side.
//!
//! The sampler writes on its own connection, outside the control loop's batches (as the hook
//! runner does): a pulse is an observation, not an input, and is never replayed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_api::{ClassPulse, HostRow, HostState, Pulse, PulseList, SlotPulse, VmState};
use serde::Deserialize;
use tokio::sync::watch;

use crate::DaemonError;
use crate::api::{ApiError, AppState, Params, Reader, params};
use crate::config::PulsesSection;
use crate::control::{Answer, LiveStatus, Query};
use crate::limits::{PULSE_ROWS_MAX, list_limit};

/// How far back `GET /v1/pulses` looks when `since_ms` is not given: an hour.
pub const SINCE_DEFAULT_MS: u64 = 3_600_000;

use crate::db::{Db, DbError, StoreAt, Value, sql};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One sample from the scheduler's status and hosts at `at_ms`.
pub(crate) fn sample(status: &LiveStatus, hosts: &[HostRow], at_ms: u64) -> Pulse {
    let vms = |s: VmState| status.vms.get(&s).copied().unwrap_or(0);
    let mut classes: BTreeMap<&str, (ClassPulse, BTreeMap<&str, SlotPulse>)> = BTreeMap::new();
    for h in hosts {
        let (c, slots) = classes.entry(h.class()).or_insert_with(|| {
            (
                ClassPulse {
                    class: h.class().to_owned(),
                    hosts: 0,
                    hosts_in_service: 0,
                    vcpus_milli: 0,
                    vcpus_used_milli: 0,
                    slots: Vec::new(),
                },
                BTreeMap::new(),
            )
        });
        c.hosts += 1;
        if !matches!(h.state, HostState::Ready | HostState::Draining) {
            continue;
        }
        c.hosts_in_service += 1;
        c.vcpus_milli += h.vcpus_milli;
        c.vcpus_used_milli += h.vcpus_used_milli;
        for s in &h.slots {
            let p = slots.entry(s.kind.as_str()).or_insert_with(|| SlotPulse {
                kind: s.kind.clone(),
                capacity: 0,
                used: 0,
            });
            p.capacity += u64::try_from(s.capacity).unwrap_or(0);
            p.used += u64::try_from(s.used).unwrap_or(0);
        }
    }
    Pulse {
        at_ms,
        waiting_requests: status.queue_len,
        waiting_vms: vms(VmState::Queued),
        running_vms: vms(VmState::Running),
        classes: classes
            .into_values()
            .map(|(mut c, slots)| {
                c.slots = slots.into_values().collect();
                c
            })
            .collect(),
    }
}

/// Writes a pulse and deletes those older than `kept_ms` before it, in one transaction: the
/// table never holds more than the period allows, whatever happened before.
pub fn write(db: &mut Db, pulse: &Pulse, kept_ms: u64) -> Result<(), DaemonError> {
    let classes = serde_json::to_string(&pulse.classes).unwrap_or_else(|_| "[]".into());
    db.transaction("writing a pulse", |db| {
        db.execute(
            "INSERT INTO pulses (at_ms, waiting_requests, waiting_vms, running_vms, classes)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (at_ms) DO UPDATE SET waiting_requests = excluded.waiting_requests,
             waiting_vms = excluded.waiting_vms, running_vms = excluded.running_vms,
             classes = excluded.classes",
            &[
                Value::capped(pulse.at_ms),
                Value::capped(pulse.waiting_requests),
                Value::capped(pulse.waiting_vms),
                Value::capped(pulse.running_vms),
                classes.into(),
            ],
        )
        .map_err(sql("writing a pulse"))?;
        db.execute(
            "DELETE FROM pulses WHERE at_ms < ?1",
            &[Value::capped(pulse.at_ms.saturating_sub(kept_ms))],
        )
        .map_err(sql("deleting old pulses"))?;
        Ok(())
    })
}

/// Pulses taken after `since_ms`, oldest first, at most `limit`; with the time to ask again
/// from when more are left.
pub fn list(
    db: &mut Db,
    since_ms: u64,
    limit: u64,
) -> Result<(Vec<Pulse>, Option<u64>), DaemonError> {
    let mut pulses = db
        .rows(
            "SELECT at_ms, waiting_requests, waiting_vms, running_vms, classes FROM pulses
             WHERE at_ms > ?1 ORDER BY at_ms LIMIT ?2",
            &[
                Value::capped(since_ms),
                Value::capped(limit.saturating_add(1)),
            ],
            |r| {
                let classes = serde_json::from_str(r.str(4)?.unwrap_or_default()).map_err(|e| {
                    DbError::Column {
                        index: 4,
                        message: e.to_string(),
                    }
                })?;
                Ok(Pulse {
                    at_ms: r.u64(0)?,
                    waiting_requests: r.u64(1)?,
                    waiting_vms: r.u64(2)?,
                    running_vms: r.u64(3)?,
                    classes,
                })
            },
        )
        .map_err(sql("reading a pulse"))?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if pulses.len() > limit {
        pulses.truncate(limit);
        let next = pulses.last().map(|p| p.at_ms);
        return Ok((pulses, next));
    }
    Ok((pulses, None))
}

/// Samples the control loop now.
async fn take(state: &AppState) -> Result<Pulse, ApiError> {
    let status = match crate::api::query(state, Query::Status).await? {
        Answer::Status(s) => s,
        _ => {
            return Err(ApiError::new(
                500,
                "the control loop answered another query",
            ));
        }
    };
    let hosts = match crate::api::query(state, Query::Hosts).await? {
        Answer::Hosts(h) => h,
        _ => {
            return Err(ApiError::new(
                500,
                "the control loop answered another query",
            ));
        }
    };
    Ok(sample(&status, &hosts, wall_ms()))
}

/// The sampler: a pulse at start, then one every `period_ms` of wall clock, until shutdown.
pub(crate) async fn run(
    state: AppState,
    store: StoreAt,
    settings: PulsesSection,
    mut shutdown: watch::Receiver<bool>,
) {
    let kept_ms = settings.kept_hours.saturating_mul(3_600_000);
    let mut conn = match Db::connect(&store) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "pulses are not sampled: opening the database failed");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(settings.period_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        // The leader samples; a follower's pulses would be the leader's again.
        if !state.lease.may_act() {
            continue;
        }
        let pulse = match take(&state).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e.error, "a pulse was not sampled");
                continue;
            }
        };
        let Some(mut c) = conn.take() else { return };
        let written = tokio::task::spawn_blocking(move || {
            let r = write(&mut c, &pulse, kept_ms);
            (c, r)
        })
        .await;
        match written {
            Ok((c, r)) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "a pulse was not written");
                }
                conn = Some(c);
            }
            Err(_) => {
                tracing::error!("the pulse writer failed; pulses stop");
                return;
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PulseQuery {
    /// Only pulses taken after this time (ms since the Unix epoch); default an hour ago.
    since_ms: Option<u64>,
    /// Pulses on the answer (at most 4320, the default).
    limit: Option<u64>,
}

/// Queue length, waiting and running VMs and utilisation per host class, sampled every
/// `[pulses] period_ms` and kept for `kept_hours`, oldest first.
#[utoipa::path(get, path = "/v1/pulses", tag = "daemon", params(PulseQuery),
    responses((status = 200, body = berth_api::PulseList)))]
pub(crate) async fn list_pulses(
    Reader(_): Reader,
    State(state): State<AppState>,
    q: Params<PulseQuery>,
) -> Result<Response, ApiError> {
    let q = params(q)?;
    let limit = list_limit(q.limit, PULSE_ROWS_MAX, PULSE_ROWS_MAX)?;
    let since_ms = q
        .since_ms
        .unwrap_or_else(|| wall_ms().saturating_sub(SINCE_DEFAULT_MS));
    let (pulses, next_since_ms) = state.reads.read(move |c| list(c, since_ms, limit)).await?;
    let body = PulseList {
        pulses,
        period_ms: state.pulses.period_ms,
        kept_ms: state.pulses.kept_hours.saturating_mul(3_600_000),
        next_since_ms,
    };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::SlotRow;

    fn host(
        name: &str,
        state: HostState,
        vcpus: u64,
        used: u64,
        slots: &[(&str, i64, i64)],
    ) -> HostRow {
        HostRow {
            id: 0,
            name: name.into(),
            driver: "sim".into(),
            state,
            vcpus_milli: vcpus * 1000,
            vcpus_used_milli: used * 1000,
            memory_mib: 1024,
            memory_used_mib: 0,
            slots: slots
                .iter()
                .map(|&(kind, capacity, used)| SlotRow {
                    kind: kind.into(),
                    capacity,
                    used,
                })
                .collect(),
            provisioning: 0,
            vms: 0,
            labels: Vec::new(),
            last_probe_ms: None,
            probe_failures: 0,
            provision_failures: 0,
            drain: None,
            images: Vec::new(),
            image_disk: None,
            pulls: Vec::new(),
        }
    }

    fn pulse(at_ms: u64) -> Pulse {
        Pulse {
            at_ms,
            waiting_requests: at_ms % 7,
            waiting_vms: at_ms % 11,
            running_vms: 3,
            classes: vec![ClassPulse {
                class: "sim-small".into(),
                hosts: 1,
                hosts_in_service: 1,
                vcpus_milli: 8000,
                vcpus_used_milli: 4000,
                slots: Vec::new(),
            }],
        }
    }

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let at = StoreAt::Sqlite(dir.path().join("berth.db"));
        drop(crate::store::Store::open(&at).unwrap());
        let conn = Db::connect(&at).unwrap();
        (dir, conn)
    }

    #[test]
    fn a_sample_groups_hosts_by_class_and_counts_capacity_in_service_only() {
        let status = LiveStatus {
            queue_len: 4,
            vms: [
                (VmState::Queued, 9),
                (VmState::Running, 5),
                (VmState::Held, 1),
            ]
            .into_iter()
            .collect(),
            ..LiveStatus::default()
        };
        let hosts = [
            host("sim-mac-1", HostState::Ready, 8, 4, &[("macos", 2, 2)]),
            host("sim-mac-2", HostState::Draining, 8, 2, &[("macos", 2, 1)]),
            host("sim-mac-3", HostState::Error, 8, 0, &[("macos", 2, 0)]),
            host("sim-small-1", HostState::Maintenance, 4, 0, &[]),
        ];
        let p = sample(&status, &hosts, 77);
        assert_eq!(
            (p.at_ms, p.waiting_requests, p.waiting_vms, p.running_vms),
            (77, 4, 9, 5)
        );
        let mac = &p.classes[0];
        assert_eq!(mac.class, "sim-mac");
        assert_eq!((mac.hosts, mac.hosts_in_service), (3, 2));
        assert_eq!((mac.vcpus_milli, mac.vcpus_used_milli), (16_000, 6_000));
        assert_eq!(
            mac.slots,
            vec![SlotPulse {
                kind: "macos".into(),
                capacity: 4,
                used: 3
            }]
        );
        let small = &p.classes[1];
        assert_eq!(small.class, "sim-small");
        assert_eq!((small.hosts, small.hosts_in_service), (1, 0));
        assert_eq!(small.vcpu_utilisation(), None);
    }

    #[test]
    fn every_write_deletes_what_is_older_than_the_kept_time() {
        let (_dir, mut conn) = open();
        let kept_ms = 24 * 3_600_000;
        let period_ms = 600_000;
        let count = |c: &mut Db| -> (u64, u64) {
            c.row(
                "SELECT count(*), coalesce(min(at_ms), 0) FROM pulses",
                &[],
                |r| Ok((r.u64(0)?, r.u64(1)?)),
            )
            .unwrap()
            .unwrap()
        };
        // 30 hours of samples every 10 minutes: after each write, nothing older than a day
        // before it is left, and never more rows than a day holds.
        let start = 1_800_000_000_000u64;
        for i in 0..(30 * 6) {
            let at = start + i * period_ms;
            write(&mut conn, &pulse(at), kept_ms).unwrap();
            let (n, oldest) = count(&mut conn);
            assert!(
                oldest >= at.saturating_sub(kept_ms),
                "row {i}: oldest {oldest}"
            );
            assert!(n <= kept_ms / period_ms + 1, "row {i}: {n} rows");
        }
        let (n, oldest) = count(&mut conn);
        assert_eq!(n, kept_ms / period_ms + 1);
        assert_eq!(oldest, start + 29 * 3_600_000 + 50 * 60_000 - kept_ms);
    }

    #[test]
    fn an_unreadable_row_is_an_error_that_says_so() {
        let (_dir, mut conn) = open();
        write(&mut conn, &pulse(1000), u64::MAX).unwrap();
        conn.execute("UPDATE pulses SET classes = 'not json'", &[])
            .unwrap();
        let e = list(&mut conn, 0, 10).unwrap_err().to_string();
        assert!(e.contains("reading a pulse"), "{e}");
    }

    #[test]
    fn listing_pages_forward_from_since() {
        let (_dir, mut conn) = open();
        for at in [1000, 2000, 3000, 4000, 5000] {
            write(&mut conn, &pulse(at), u64::MAX).unwrap();
        }
        let (all, next) = list(&mut conn, 0, 10).unwrap();
        assert_eq!(
            all.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
            [1000, 2000, 3000, 4000, 5000]
        );
        assert_eq!(next, None);
        assert_eq!(all[2], pulse(3000), "a pulse reads back as written");
        let (page, next) = list(&mut conn, 1000, 2).unwrap();
        assert_eq!(
            page.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
            [2000, 3000]
        );
        assert_eq!(next, Some(3000));
        let (rest, next) = list(&mut conn, 3000, 2).unwrap();
        assert_eq!(
            rest.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
            [4000, 5000]
        );
        assert_eq!(next, None);
    }
}
