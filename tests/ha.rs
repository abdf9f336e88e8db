//! High availability on PostgreSQL, as operators run it: three `berth serve` processes on one
//! database and one shared simulated inventory. The leader is killed (SIGKILL) in the middle of
//! 2,000-VM bursts, paused past its lease (SIGSTOP, SIGCONT), and cut off from the database (a
//! proxy that stops passing bytes); and a lone leader is cut off by the network (a firewall
//! rule) for a minute. What the hosts say (the shared inventory, and its log of
//! driver actions with the process that made each) is checked against what the database says.
//!
//! Skipped, saying why, without a PostgreSQL server (`BERTH_TEST_POSTGRES`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_client::Client;
use berth_testkit::postgres::{Database, fresh_database, psql};
use berth_testkit::serve::Serve;
use berth_testkit::sim::{SimActionOp, SimVmState, sim_actions, sim_inventory};

const TOKEN: &str = "ha-test-operator-token-0123456789abcdef";
/// The lease's defaults (`[ha]`): what the figures are measured with.
const TTL: Duration = Duration::from_millis(5_000);
/// Requests of a burst, and VMs per request: 2,000 VMs.
const BURST_REQUESTS: usize = 200;
const VMS_PER_REQUEST: u32 = 10;
/// How long the fleet may take to settle after a burst or a cancel.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Three daemons on one fresh database and one shared inventory.
struct Trio {
    db: Database,
    inventory: PathBuf,
    /// What the `request.active` hook wrote: `EVENT_ID REQUEST` a line, from every daemon.
    hook_log: PathBuf,
    daemons: Vec<Serve>,
    _dir: tempfile::TempDir,
}

impl Trio {
    /// `ha` is the `[ha]` section's body. The first daemon leads; the others follow.
    fn start(ha: &str, store_of: impl Fn(usize, &str) -> String) -> Option<Trio> {
        let db = fresh_database()?;
        let dir = tempfile::tempdir().unwrap();
        let inventory = dir.path().join("inventory");
        std::fs::create_dir_all(&inventory).unwrap();
        let hook_log = dir.path().join("hook.log");
        let hook = dir.path().join("log-request");
        std::fs::write(
            &hook,
            "#!/bin/sh\necho \"$BERTH_EVENT_ID $BERTH_REQUEST_ID\" >> \"$1\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut hosts = String::new();
        for i in 1..=8 {
            hosts.push_str(&format!(
                "\n[[hosts]]\nname = \"kvm-{i}\"\ndriver = \"sim\"\nvcpus = 512\n\
                 memory_mib = 2097152\nimages = [\"linux\"]\nlabels = {{ arch = \"x86_64\" }}\n"
            ));
        }
        let daemons = (0..3)
            .map(|i| {
                let config = format!(
                    "store = \"{}\"\n[ha]\n{ha}\n[[tokens]]\nname = \"ci\"\ntoken = \"{TOKEN}\"\n\
                     role = \"operator\"\n[sim]\nlatency_scale = 0.02\nshared_inventory = \"{}\"\n\
                     [recovery]\nsnapshot_every_inputs = 20000\n[[hooks]]\nname = \"active\"\n\
                     on = \"request.active\"\ncommand = [\"{}\", \"{}\"]\n{hosts}",
                    store_of(i, db.url()),
                    inventory.display(),
                    hook.display(),
                    hook_log.display()
                );
                Serve::start(
                    Path::new(env!("CARGO_BIN_EXE_berth")),
                    &dir.path().join(format!("d{i}")),
                    &config,
                )
            })
            .collect();
        Some(Trio {
            db,
            inventory,
            hook_log,
            daemons,
            _dir: dir,
        })
    }

    fn client(&self, i: usize) -> Client {
        Client::new(&self.daemons[i].url, Some(TOKEN.to_owned()))
    }

    /// What `/healthz` says, or `None` when the daemon does not answer.
    fn health(&self, i: usize) -> Option<String> {
        ureq::get(&format!("{}/healthz", self.daemons[i].url))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()?
            .into_string()
            .ok()
    }

    /// The daemon that says it leads, waiting for one for at most `limit`.
    fn leader(&self, skip: Option<usize>, limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            for i in (0..3).filter(|i| Some(*i) != skip) {
                if self.health(i).is_some_and(|h| h.contains("(leader,")) {
                    return i;
                }
            }
            assert!(start.elapsed() < limit, "no daemon leads within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn sql(&self, query: &str) -> String {
        psql(self.db.url(), query).trim().to_owned()
    }

    /// Waits until no VM is on its way (placed, provisioning, booting, releasing) and none
    /// waits.
    fn settle(&self) {
        let start = Instant::now();
        loop {
            let moving = self.sql(
                "SELECT count(*) FROM vms WHERE state IN
                 ('queued', 'placed', 'provisioning', 'booting', 'releasing')",
            );
            if moving == "0" {
                return;
            }
            assert!(
                start.elapsed() < SETTLE_LIMIT,
                "{moving} vms still on their way after {SETTLE_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The hosts' side: VM name -> (host, state), with no VM on two hosts.
    fn on_hosts(&self) -> BTreeMap<String, (String, SimVmState)> {
        let mut out = BTreeMap::new();
        for (host, vms) in sim_inventory(&self.inventory) {
            for (vm, state) in vms {
                if let Some((other, _)) = out.insert(vm.clone(), (host.clone(), state)) {
                    panic!("{vm} is on two hosts: {other} and {host}");
                }
            }
        }
        out
    }

    /// The database's side: every live VM (by object name) and its host's name.
    fn live_in_db(&self) -> BTreeMap<String, String> {
        self.sql(
            "SELECT 'berth-vm' || v.id, h.name FROM vms v JOIN hosts h ON h.id = v.host
             WHERE v.state IN ('provisioning', 'booting', 'running', 'held', 'releasing')",
        )
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (vm, host) = l.split_once('|').unwrap();
            (vm.to_owned(), host.to_owned())
        })
        .collect()
    }

    /// Every VM on the hosts is a live VM of the database on the same host, and the other way
    /// round: no orphan, nothing lost.
    fn assert_hosts_match_the_database(&self) {
        let on_hosts: BTreeMap<String, String> = self
            .on_hosts()
            .into_iter()
            .map(|(vm, (host, _))| (vm, host))
            .collect();
        let in_db = self.live_in_db();
        let orphans: Vec<_> = on_hosts
            .keys()
            .filter(|v| !in_db.contains_key(*v))
            .collect();
        let missing: Vec<_> = in_db
            .keys()
            .filter(|v| !on_hosts.contains_key(*v))
            .collect();
        assert!(orphans.is_empty(), "orphans on the hosts: {orphans:?}");
        assert!(
            missing.is_empty(),
            "live in the database, not on a host: {missing:?}"
        );
        assert_eq!(on_hosts, in_db, "a VM is on another host than recorded");
    }
}

impl Trio {
    /// Once the hook outbox is empty: every request of `acked` made active reached the hook
    /// (or its run is recorded as abandoned, claimed by a leader that died before recording
    /// its end), whichever daemon led when its event was written; no event and no request
    /// reached it twice, over the whole test.
    fn assert_hooks_ran_once(&self, acked: &BTreeSet<u64>) {
        let start = Instant::now();
        while self.sql("SELECT count(*) FROM hook_outbox") != "0" {
            assert!(
                start.elapsed() < SETTLE_LIMIT,
                "hook jobs still owed after {SETTLE_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(&self.hook_log).unwrap_or_default();
        let (mut events, mut requests) = (BTreeSet::new(), BTreeSet::new());
        for line in text.lines() {
            let (event, request) = line.split_once(' ').unwrap();
            assert!(
                events.insert(event.to_owned()),
                "event {event} ran its hook twice"
            );
            let request: u64 = request.parse().unwrap();
            assert!(
                requests.insert(request),
                "request {request} became active twice"
            );
        }
        let abandoned: BTreeSet<u64> = self
            .sql("SELECT request FROM hook_runs WHERE outcome = 'abandoned'")
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        let unheard: Vec<_> = acked
            .iter()
            .filter(|r| !requests.contains(*r) && !abandoned.contains(*r))
            .collect();
        assert!(
            unheard.is_empty(),
            "request.active never reached the hook: {unheard:?}"
        );
    }
}

fn one_request() -> berth_api::SubmitRequest {
    serde_json::from_value(serde_json::json!({
        "template": "linux",
        "count": VMS_PER_REQUEST,
    }))
    .unwrap()
}

/// Submits `n` requests, sending each to daemon `first` and on to the next daemon while one
/// fails (refused, or no answer); calls `between(acked)` before each. Returns the acknowledged
/// ids and when each was acknowledged.
fn burst(
    trio: &Trio,
    n: usize,
    first: usize,
    skip: &dyn Fn() -> Option<usize>,
    mut between: impl FnMut(usize),
) -> Vec<(u64, Instant)> {
    let mut acked = Vec::new();
    let mut at = first;
    let request = one_request();
    while acked.len() < n {
        between(acked.len());
        if Some(at) == skip() {
            at = (at + 1) % 3;
            continue;
        }
        match trio.client(at).submit(&request) {
            Ok(row) => acked.push((row.id, Instant::now())),
            Err(_) => {
                at = (at + 1) % 3;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    acked
}

/// A thread that asks the daemons but `killed` what they are every 5 ms, and ends with how
/// long after `since` one said it leads.
fn watch_for_a_leader(
    trio: &Trio,
    killed: usize,
    since: Instant,
) -> std::thread::JoinHandle<Duration> {
    let urls: Vec<String> = (0..3)
        .filter(|i| *i != killed)
        .map(|i| format!("{}/healthz", trio.daemons[i].url))
        .collect();
    std::thread::spawn(move || {
        loop {
            for url in &urls {
                let said = ureq::get(url)
                    .timeout(Duration::from_secs(1))
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok());
                if said.is_some_and(|h| h.contains("(leader,")) {
                    return since.elapsed();
                }
            }
            assert!(since.elapsed() < Duration::from_secs(60), "nobody leads");
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The trial, `BERTH_HA_TRIALS` times (20 by default): the leader is killed in the
/// middle of a 2,000-VM burst that clients send through a follower; a follower leads, every
/// acknowledged request exists once, no VM is on two hosts or an orphan, none was provisioned
/// twice, and the VMs on the hosts before the kill are untouched.
#[test]
fn a_killed_leader_is_replaced_and_the_hosts_are_left_alone() {
    let Some(mut trio) = Trio::start("", |_, url| url.to_owned()) else {
        return;
    };
    let trials: usize = std::env::var("BERTH_HA_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // From the kill until a follower holds the lease, and until a request is acknowledged.
    let (mut leases, mut takeovers) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        let leader = trio.leader(None, Duration::from_secs(30));
        let follower = (leader + 1) % 3;
        let mut before: Option<BTreeMap<String, (String, SimVmState)>> = None;
        let mut killed_at: Option<Instant> = None;
        let killed = std::cell::Cell::new(None);
        let mut watcher = None;
        let acked = burst(&trio, BURST_REQUESTS, follower, &|| killed.get(), |n| {
            if n == BURST_REQUESTS / 2 && killed_at.is_none() {
                before = Some(trio.on_hosts());
                trio.daemons[leader].signal("KILL");
                let at = Instant::now();
                killed_at = Some(at);
                killed.set(Some(leader));
                watcher = Some(watch_for_a_leader(&trio, leader, at));
            }
        });
        // Reaps it.
        trio.daemons[leader].kill();
        let killed_at = killed_at.unwrap();
        let first_after = acked
            .iter()
            .map(|(_, at)| *at)
            .find(|at| *at > killed_at)
            .unwrap();
        let took = first_after - killed_at;
        takeovers.push(took);
        leases.push(watcher.unwrap().join().unwrap());
        let new_leader = trio.leader(Some(leader), Duration::from_secs(30));
        assert_ne!(new_leader, leader);
        trio.settle();

        // Every acknowledged request exists, once.
        let ids: BTreeSet<u64> = acked.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), acked.len(), "an id was acknowledged twice");
        let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let found = trio.sql(&format!(
            "SELECT count(*) FROM requests WHERE id IN ({list})"
        ));
        assert_eq!(
            found,
            ids.len().to_string(),
            "acknowledged requests missing"
        );
        let bad = trio.sql("SELECT count(*) FROM vms WHERE state IN ('lost', 'failed')");
        assert_eq!(bad, "0", "VMs lost or failed across the takeover");
        trio.assert_hosts_match_the_database();
        // The VMs on the hosts before the kill are there still, as they were made.
        let after = trio.on_hosts();
        for (vm, (host, state)) in before.unwrap() {
            let (now_host, now) = after
                .get(&vm)
                .unwrap_or_else(|| panic!("trial {trial}: {vm} on {host} was destroyed"));
            assert_eq!(
                (now_host, now.created_ms),
                (&host, state.created_ms),
                "trial {trial}: {vm} was made again"
            );
        }
        trio.assert_hooks_ran_once(&ids);
        // No VM was provisioned twice (a provision in flight at the kill is adopted).
        let mut provisioned = BTreeSet::new();
        for a in sim_actions(&trio.inventory) {
            if a.op == SimActionOp::Provision {
                assert!(
                    provisioned.insert((a.host.clone(), a.vm.clone())),
                    "trial {trial}: {} provisioned twice on {}",
                    a.vm,
                    a.host
                );
            }
        }

        // Clean up for the next trial: cancel through a follower, and start the killed
        // daemon again (it follows).
        let other = (0..3).find(|i| *i != leader && *i != new_leader).unwrap();
        let client = trio.client(other);
        for id in &ids {
            client.cancel(*id).unwrap();
        }
        trio.settle();
        assert!(trio.on_hosts().is_empty(), "VMs left after the cancels");
        trio.daemons[leader].restart();
        eprintln!(
            "trial {trial}: lease taken after {:?}, first request accepted after {took:?}",
            leases.last().unwrap()
        );
        if std::env::var_os("BERTH_HA_LOGS").is_some() {
            for d in &trio.daemons {
                eprintln!("{}", d.log());
            }
        }
    }
    for (what, times) in [
        ("a follower holds the lease", &mut leases),
        ("a request is accepted again", &mut takeovers),
    ] {
        times.sort();
        eprintln!(
            "SIGKILL of the leader, {} trials (lease ttl {TTL:?}): {what} after p50 {:?}, p99 {:?}, max {:?}",
            times.len(),
            percentile(times, 0.5),
            percentile(times, 0.99),
            times.last().unwrap()
        );
    }
    let (lease_max, max) = (*leases.last().unwrap(), *takeovers.last().unwrap());
    // The lease runs out at most `TTL` after the kill (a little slack for a busy machine);
    // accepting requests again adds replay, reconciliation and the client's retry.
    assert!(
        lease_max < TTL + Duration::from_secs(1),
        "a follower took the lease {lease_max:?} after the kill"
    );
    assert!(
        max < TTL + Duration::from_secs(5),
        "a takeover took {max:?}"
    );
}

/// Submits `n` requests through daemon `via` and waits for their VMs to run.
fn submit_and_settle(trio: &Trio, via: usize, n: usize) -> Vec<u64> {
    let acked = burst(trio, n, via, &|| None, |_| {});
    trio.settle();
    acked.into_iter().map(|(id, _)| id).collect()
}

/// Driver actions of process `pid` at or after `since_ms`.
fn actions_of(trio: &Trio, pid: u32, since_ms: u64) -> Vec<String> {
    sim_actions(&trio.inventory)
        .into_iter()
        .filter(|a| a.pid == pid && a.at_ms >= since_ms)
        .map(|a| format!("{} {:?} {} {}", a.at_ms, a.op, a.host, a.vm))
        .collect()
}

/// Waits until daemon `i` says it follows (it starts again as a follower after it lost the
/// lease).
fn wait_follower(trio: &Trio, i: usize, limit: Duration) {
    let start = Instant::now();
    while !trio.health(i).is_some_and(|h| h.contains("(follower;")) {
        assert!(
            start.elapsed() < limit,
            "daemon {i} does not follow within {limit:?}; it says {:?}:\n{}",
            trio.health(i),
            trio.daemons[i].log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A leader stopped (SIGSTOP) past its lease: another leads meanwhile; once continued, the old
/// one makes no driver call, stops leading, and starts again as a follower (same process).
#[test]
fn a_paused_leader_stops_and_rejoins_as_a_follower() {
    let Some(trio) = Trio::start("", |_, url| url.to_owned()) else {
        return;
    };
    let old = trio.leader(None, Duration::from_secs(30));
    let before = submit_and_settle(&trio, old, 5);
    let pid = trio.daemons[old].pid().unwrap();
    let stopped_ms = now_ms();
    trio.daemons[old].signal("STOP");
    let new = trio.leader(Some(old), TTL + Duration::from_secs(3));
    // The new leader works while the old one sleeps.
    let ids = submit_and_settle(&trio, new, 20);
    trio.daemons[old].signal("CONT");
    // Its lease thread sees the new holder; its control loop stops, and the process starts
    // again (the same pid), as a follower.
    let start = Instant::now();
    while !trio.daemons[old].log().contains("no longer leading") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the old leader did not stop:\n{}",
            trio.daemons[old].log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_follower(&trio, old, Duration::from_secs(20));
    assert_eq!(trio.daemons[old].pid(), Some(pid));
    // Nothing on the hosts from the old leader since it was stopped.
    let acted = actions_of(&trio, pid, stopped_ms);
    assert!(acted.is_empty(), "the paused leader acted: {acted:?}");
    // Clients of the old leader now reach the new one through it.
    let row = trio.client(old).submit(&one_request()).unwrap();
    assert!(row.id > *ids.iter().max().unwrap());
    trio.settle();
    trio.assert_hosts_match_the_database();
    let bad = trio.sql("SELECT count(*) FROM vms WHERE state IN ('lost', 'failed')");
    assert_eq!(bad, "0");
    let all: BTreeSet<u64> = before.into_iter().chain(ids).chain([row.id]).collect();
    trio.assert_hooks_ran_once(&all);
}

/// A leader cut off from the database (its connections go through a proxy that stops passing
/// bytes): it stops acting before its lease can have expired, a follower takes over, and once
/// the database is back the old leader follows.
#[test]
fn a_leader_cut_off_from_the_database_is_replaced() {
    let server = match berth_testkit::postgres::server() {
        Some(s) => s,
        None => return,
    };
    let hostport = server
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(hp, _)| hp.to_owned())
        .unwrap();
    let proxy = berth_testkit::proxy::Proxy::start(&hostport);
    let port = proxy.port();
    let Some(trio) = Trio::start("", |i, url| {
        if i == 0 {
            url.replacen(&hostport, &format!("127.0.0.1:{port}"), 1)
        } else {
            url.to_owned()
        }
    }) else {
        return;
    };
    let old = trio.leader(None, Duration::from_secs(30));
    assert_eq!(old, 0, "the first daemon started leads");
    submit_and_settle(&trio, old, 5);
    let pid = trio.daemons[old].pid().unwrap();
    let cut_ms = now_ms();
    proxy.freeze();
    let cut = Instant::now();
    let new = trio.leader(Some(old), TTL + Duration::from_secs(3));
    let took = cut.elapsed();
    eprintln!("takeover after the cut: {took:?}");
    submit_and_settle(&trio, new, 20);
    // The old leader's gate closed before its lease ran out: nothing from it since the cut.
    let acted = actions_of(&trio, pid, cut_ms);
    assert!(acted.is_empty(), "the cut-off leader acted: {acted:?}");
    proxy.thaw();
    wait_follower(&trio, old, Duration::from_secs(30));
    trio.settle();
    trio.assert_hosts_match_the_database();
}

/// A follower answers reads of the scheduler's state itself, from its replica of the leader's
/// (the journal replayed, and read again before each answer, so a client reads what it just
/// wrote through it), the same as the leader answers them; writes it sends to the leader.
#[test]
fn a_follower_answers_reads_from_its_replica_and_sends_writes_to_the_leader() {
    let Some(trio) = Trio::start("", |_, url| url.to_owned()) else {
        return;
    };
    let leader = trio.leader(None, Duration::from_secs(30));
    let follower = (leader + 1) % 3;
    let ids = submit_and_settle(&trio, leader, 5);
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(10))
        .build();
    let call = |i: usize, method: &str, path: &str| -> (u16, serde_json::Value) {
        let req = agent
            .request(method, &format!("{}{path}", trio.daemons[i].url))
            .set("Authorization", &format!("Bearer {TOKEN}"));
        let resp = if method == "POST" {
            req.send_json(serde_json::json!({"template": "linux", "count": 1}))
        } else {
            req.call()
        };
        match resp {
            Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    };
    // The follower builds its replica once the leader has pinned its settings.
    let start = Instant::now();
    while call(follower, "GET", "/v1/status").0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "no replica");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, status) = call(follower, "GET", "/v1/status");
    assert_eq!(status["leadership"]["role"], "follower", "{status}");
    assert_eq!(
        status["leadership"]["leader"],
        trio.daemons[leader].url.as_str(),
        "{status}"
    );
    let (_, at_leader) = call(leader, "GET", "/v1/status");
    for key in ["live_requests", "queue_len", "live_vms", "hosts"] {
        assert_eq!(
            status[key], at_leader[key],
            "{key}: {status} against {at_leader}"
        );
    }
    let hosts = |i: usize| -> Vec<(String, String)> {
        let (code, v) = call(i, "GET", "/v1/hosts");
        assert_eq!(code, 200, "{v}");
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["name"].to_string(), h["state"].to_string()))
            .collect()
    };
    assert_eq!(hosts(follower), hosts(leader));
    assert_eq!(call(follower, "GET", "/v1/queue").0, 200);
    let detail = |i: usize, id: u64| -> serde_json::Value {
        let (code, v) = call(i, "GET", &format!("/v1/requests/{id}"));
        assert_eq!(code, 200, "r{id} from daemon {i}: {v}");
        serde_json::json!({"state": v["state"], "vms": v["vms"], "why": v["why"]})
    };
    for id in &ids {
        assert_eq!(detail(follower, *id), detail(leader, *id));
    }
    // A write sent to the follower goes to the leader; what it made, the follower reads at
    // once.
    let (code, _) = call(follower, "POST", "/v1/requests");
    assert_eq!(code, 307);
    let row = trio.client(follower).submit(&one_request()).unwrap();
    let (code, v) = call(follower, "GET", &format!("/v1/requests/{}", row.id));
    assert_eq!(code, 200, "the follower does not know r{} yet: {v}", row.id);
    // What needs the drivers (a VM's console) goes to the leader.
    let vm = v["vms"][0]["id"].as_u64().unwrap();
    let (code, _) = call(follower, "GET", &format!("/v1/vms/{vm}/screenshot"));
    assert_eq!(code, 307);
}

/// Firewall rules that drop every packet to and from a TCP port of this machine, removed
/// when dropped (a failing test too).
struct Dropped {
    port: u16,
}

impl Dropped {
    fn rules(&self, op: &str) -> Vec<Vec<String>> {
        ["--dport", "--sport"]
            .iter()
            .map(|dir| {
                let port = self.port.to_string();
                ["-w", op, "INPUT", "-p", "tcp", dir, &port, "-j", "DROP"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .collect()
    }

    /// Drops `port`'s packets; `None` after the shared skip rule when there is no `iptables`
    /// that this process may use (it needs root).
    fn start(port: u16) -> Option<Dropped> {
        let usable = std::process::Command::new("iptables")
            .args(["-w", "-L", "INPUT", "-n"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !usable {
            berth_testkit::skip_or_fail(
                "iptables cannot be used here (not installed, or not root): a network that \
                 drops packets cannot be made",
            );
            return None;
        }
        let dropped = Dropped { port };
        for rule in dropped.rules("-I") {
            let status = std::process::Command::new("iptables")
                .args(&rule)
                .status()
                .unwrap();
            assert!(status.success(), "iptables {rule:?}");
        }
        Some(dropped)
    }
}

impl Drop for Dropped {
    fn drop(&mut self) {
        for rule in self.rules("-D") {
            let _ = std::process::Command::new("iptables").args(&rule).status();
        }
    }
}

/// The network between a lone `berth serve` and its PostgreSQL drops every packet for a minute
/// (a firewall rule on the port of a cluster of the test's own; nothing is refused, nothing
/// answers). The daemon's connections give up on the server within their TCP timeouts rather
/// than the system's retransmission backoff, so once the network is back it leads and takes
/// writes again within seconds.
#[test]
fn a_leader_cut_off_by_the_network_leads_again_within_seconds_of_its_return() {
    let Some(cluster) = berth_testkit::postgres::Cluster::start() else {
        return;
    };
    let url = cluster.create_database("berth");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "store = \"{url}\"\n[[tokens]]\nname = \"ci\"\ntoken = \"{TOKEN}\"\nrole = \"operator\"\n\
         [sim]\nlatency_scale = 0.02\n[[hosts]]\nname = \"kvm-1\"\ndriver = \"sim\"\nvcpus = 64\n\
         memory_mib = 262144\nimages = [\"linux\"]\nlabels = {{ arch = \"x86_64\" }}\n"
    );
    let serve = Serve::start(Path::new(env!("CARGO_BIN_EXE_berth")), dir.path(), &config);
    serve.wait_leading();
    let client = Client::new(&serve.url, Some(TOKEN.to_owned()));
    let first = client.submit(&one_request()).unwrap().id;
    let health = || {
        ureq::get(&format!("{}/healthz", serve.url))
            .timeout(Duration::from_secs(1))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    };
    let Some(cut) = Dropped::start(cluster.port()) else {
        return;
    };
    // Past the lease, past the keepalives' and the TCP timeouts' reach, and past the first
    // minute of the system's retransmission backoff.
    std::thread::sleep(Duration::from_secs(60));
    assert!(
        !health().contains("(leader,"),
        "still leading while cut off"
    );
    drop(cut);
    let back = Instant::now();
    while !health().contains("(leader,") {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no lead 60 s after the network came back; it says {:?}; the lease: {}\n{}",
            health(),
            psql(&url, "SELECT holder, epoch, expires_ms FROM lease"),
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let leads = back.elapsed();
    let second = loop {
        match client.submit(&one_request()) {
            Ok(row) => break row.id,
            Err(e) => {
                assert!(
                    back.elapsed() < Duration::from_secs(60),
                    "no write taken: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let writes = back.elapsed();
    eprintln!(
        "after a minute cut off: leads again {leads:?}, a write taken {writes:?} after the network's return"
    );
    // The system's backoff alone would retry a minute's cut a further 40 s or so later.
    assert!(
        leads < Duration::from_secs(15) && writes < Duration::from_secs(20),
        "back after {leads:?} (lead) and {writes:?} (write)"
    );
    assert!(second > first);
    let known = psql(
        &url,
        &format!("SELECT count(*) FROM requests WHERE id IN ({first}, {second})"),
    );
    assert_eq!(known, "2");
}
