//! Fixed fleets for snapshot tests, key-script tests and the frame-time benchmark: the same
//! inputs always draw the same screens.

use crate::model::{
    ArrivalForecast, Breakpoint, DrainPrediction, Host, Request, Slot, Snapshot, Vm, WaitStats,
    Why, host_class, vm_name,
};

/// The fixed clock of fixtures: 2026-05-01 12:00:00 UTC.
pub const NOW_MS: u64 = 1_777_636_800_000;

fn host(name: &str, state: &str, cpus: u64, used: u64, mem_g: u64, used_g: u64, vms: u64) -> Host {
    let labels = vec!["arch=x86_64".to_owned()];
    Host {
        class: host_class(name, &labels),
        name: name.into(),
        driver: "sim".into(),
        state: state.into(),
        cpu_milli: cpus * 1000,
        cpu_used_milli: used * 1000,
        memory_mib: mem_g * 1024,
        memory_used_mib: used_g * 1024,
        n_vms: vms,
        labels,
        last_probe_ms: Some(NOW_MS - 12_000),
        // Macs take two macOS guests each.
        slots: if name.contains("mac") {
            vec![Slot {
                kind: "macos".into(),
                capacity: 2,
                used: i64::try_from(vms.min(2)).unwrap_or(2),
            }]
        } else {
            Vec::new()
        },
        images: if name.contains("mac") {
            vec!["macos".into()]
        } else {
            vec!["linux".into(), "windows".into()]
        },
        // One pull running, to the host that runs the most.
        pulling: if name == "sim-large-1" {
            vec!["win11".into()]
        } else {
            Vec::new()
        },
    }
}

/// A small fleet with something in every state: six hosts, a queue, VMs and two breakpoints.
pub fn small() -> Snapshot {
    let hosts = vec![
        host("sim-small-1", "ready", 16, 12, 64, 40, 3),
        host("sim-small-2", "draining", 16, 4, 64, 8, 1),
        host("sim-small-3", "ready", 16, 0, 64, 0, 0),
        host("sim-large-1", "ready", 128, 96, 256, 200, 12),
        host("sim-large-2", "error", 128, 0, 256, 0, 0),
        host("sim-mac-1", "maintenance", 12, 0, 32, 0, 0),
    ];
    let why = |s: &str, reasons: &[(&str, u64)]| {
        Some(Why {
            summary: s.into(),
            reasons: reasons.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
        })
    };
    let queue = vec![
        Request {
            id: 41,
            account: "qt-base".into(),
            change: Some("I7".into()),
            requester: "ci-linux".into(),
            template: "linux".into(),
            count: 4,
            vcpus: Some(8),
            memory_mib: Some(16_384),
            priority: 5,
            submitted_ms: NOW_MS - 754_000,
            state: "waiting".into(),
            why: why(
                "gang of 4: only 2 fit now",
                &[("too few free vcpus", 3), ("draining", 1)],
            ),
            position: Some(1),
            eta_ms: Some(NOW_MS + 252_000),
            eta_after_ms: None,
        },
        Request {
            id: 42,
            account: "release".into(),
            change: Some("R2".into()),
            requester: "ci-mac".into(),
            template: "macos".into(),
            count: 1,
            vcpus: Some(4),
            memory_mib: Some(8192),
            priority: 0,
            submitted_ms: NOW_MS - 3_700_000,
            state: "waiting".into(),
            why: why(
                "no host fits: no macos slot free",
                &[("no free macos slot", 1)],
            ),
            position: Some(2),
            eta_ms: Some(NOW_MS + 4_380_000),
            eta_after_ms: None,
        },
        Request {
            id: 43,
            account: "qt-base".into(),
            change: Some("I7".into()),
            requester: "nightly".into(),
            template: "windows".into(),
            count: 2,
            vcpus: Some(4),
            memory_mib: Some(8192),
            priority: -1,
            submitted_ms: NOW_MS - 30_000,
            state: "waiting".into(),
            why: why("behind r41 at the head of the queue", &[]),
            position: Some(3),
            eta_ms: None,
            eta_after_ms: Some(NOW_MS + 86_400_000),
        },
    ];
    let vm = |id: u64, req: u64, t: &str, host: Option<&str>, state: &str, age_s: u64| Vm {
        id,
        name: vm_name(id),
        request: req,
        template: t.into(),
        host: host.map(str::to_owned),
        state: state.into(),
        created_ms: NOW_MS - age_s * 1000,
        updated_ms: NOW_MS - age_s * 500,
    };
    let vms = vec![
        vm(101, 30, "linux", Some("sim-small-1"), "running", 1800),
        vm(102, 30, "linux", Some("sim-small-1"), "running", 1800),
        vm(103, 31, "windows", Some("sim-small-1"), "booting", 40),
        vm(104, 32, "linux", Some("sim-small-2"), "held", 7200),
        vm(105, 33, "linux", Some("sim-large-1"), "provisioning", 12),
        vm(106, 34, "linux", Some("sim-large-1"), "held", 600),
        vm(107, 41, "linux", None, "queued", 754),
    ];
    let breakpoints = vec![
        Breakpoint {
            vm: 104,
            name: vm_name(104),
            owner: "alice".into(),
            host: Some("sim-small-2".into()),
            held_since_ms: NOW_MS - 3_600_000,
            expires_ms: Some(NOW_MS + 4 * 3_600_000),
        },
        Breakpoint {
            vm: 106,
            name: vm_name(106),
            owner: "bob".into(),
            host: Some("sim-large-1".into()),
            held_since_ms: NOW_MS - 300_000,
            expires_ms: Some(NOW_MS + 600_000),
        },
    ];
    let pulses = pulses(&hosts);
    Snapshot {
        now_ms: NOW_MS,
        hosts,
        queue,
        vms,
        breakpoints,
        pulses,
        accounts: vec![
            account("qt-base", 3, 0.5, 0.62, 112_000, 2, 0),
            account("release", 4, 0.33, 0.25, 32_000, 0, 1),
            account("dev-anna", 1, 0.17, 0.13, 8_000, 1, 2),
        ],
    }
}

/// An account under fair share: entitled `share` against `used` (shares of 1), what it holds
/// and how many of its requests wait, at `rank` in the order of service.
fn account(
    name: &str,
    weight: u64,
    share: f64,
    used: f64,
    holding_milli: i64,
    waiting: u64,
    rank: u32,
) -> berth_api::AccountRow {
    berth_api::AccountRow {
        account: name.to_owned(),
        weight,
        share,
        usage_vcpu_s: used * 1e6,
        usage_share: used,
        holding_vcpus_milli: holding_milli,
        waiting_requests: waiting,
        rank: Some(rank),
    }
}

/// The pulses a daemon would have taken of a fleet of `hosts` over the last hour, every 10 s,
/// with a gap of five minutes (a daemon restart) 40 minutes ago: the queue grows and drains
/// in waves, each class's use follows it and ends at what the hosts hold now, and hosts in
/// maintenance were in service until a minute ago.
pub fn pulses(hosts: &[Host]) -> Vec<berth_api::Pulse> {
    let period_ms = 10_000;
    let mut classes: Vec<&str> = hosts.iter().map(|h| h.class.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    (0..360u64)
        .filter(|i| !(120..150).contains(i))
        .map(|i| {
            // A triangle wave with a 15-minute period, 0 to 6 requests, at 3 in the end.
            let phase = (i + 25) % 90;
            let waiting = if phase < 45 {
                phase / 7
            } else {
                (90 - phase) / 7
            };
            let in_service = |h: &Host| {
                h.state == "ready" || h.state == "draining" || (h.state == "maintenance" && i < 354)
            };
            berth_api::Pulse {
                at_ms: NOW_MS - (359 - i) * period_ms,
                waiting_requests: waiting,
                waiting_vms: waiting * 2,
                running_vms: 10 + i / 30,
                classes: classes
                    .iter()
                    .map(|&class| {
                        let of_class: Vec<&Host> =
                            hosts.iter().filter(|h| h.class == class).collect();
                        let serving: Vec<&Host> =
                            of_class.iter().copied().filter(|h| in_service(h)).collect();
                        let vcpus_milli: u64 = serving.iter().map(|h| h.cpu_milli).sum();
                        let used_now: u64 = serving.iter().map(|h| h.cpu_used_milli).sum();
                        let slots: Vec<berth_api::SlotPulse> = serving
                            .iter()
                            .flat_map(|h| &h.slots)
                            .map(|s| {
                                let capacity = u64::try_from(s.capacity).unwrap_or(0);
                                berth_api::SlotPulse {
                                    kind: s.kind.clone(),
                                    capacity,
                                    used: capacity * waiting / 6,
                                }
                            })
                            .collect();
                        berth_api::ClassPulse {
                            class: class.to_owned(),
                            hosts: of_class.len() as u64,
                            hosts_in_service: serving.len() as u64,
                            vcpus_milli,
                            vcpus_used_milli: (used_now * (4 + waiting) / 7).min(vcpus_milli),
                            slots,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A forecast for draining `hosts`, with the last hour's requests replayed: they wait far
/// longer with the drain than the queue does.
pub fn prediction(hosts: &[String]) -> DrainPrediction {
    DrainPrediction {
        hosts: hosts.to_vec(),
        horizon_ms: 3_600_000,
        without: WaitStats {
            mean_wait_ms: 62_000,
            p95_wait_ms: 240_000,
            max_wait_ms: 754_000,
            still_waiting: 0,
        },
        with: WaitStats {
            mean_wait_ms: 185_000,
            p95_wait_ms: 900_000,
            max_wait_ms: 1_500_000,
            still_waiting: 2,
        },
        arrivals: Some(ArrivalForecast {
            requests: 16,
            without: WaitStats {
                mean_wait_ms: 95_000,
                p95_wait_ms: 420_000,
                max_wait_ms: 610_000,
                still_waiting: 0,
            },
            with: WaitStats {
                mean_wait_ms: 540_000,
                p95_wait_ms: 1_980_000,
                max_wait_ms: 2_700_000,
                still_waiting: 3,
            },
        }),
    }
}

/// A big fleet: `n_hosts` hosts in a few classes and `n_vms` VMs spread over them, with a
/// queue of one request per 100 VMs. Deterministic.
pub fn large(n_hosts: usize, n_vms: usize) -> Snapshot {
    let classes = ["small", "large", "mac", "arm"];
    let states = [
        "ready",
        "ready",
        "ready",
        "ready",
        "draining",
        "error",
        "maintenance",
    ];
    let hosts: Vec<Host> = (0..n_hosts)
        .map(|i| {
            let class = classes[i % classes.len()];
            let mut h = host(
                &format!("{class}-{i}"),
                states[i % states.len()],
                64,
                (i % 64) as u64,
                256,
                (i % 256) as u64,
                (i % 20) as u64,
            );
            h.class = class.into();
            h
        })
        .collect();
    let vm_states = [
        "running",
        "running",
        "running",
        "booting",
        "provisioning",
        "held",
        "queued",
    ];
    let vms: Vec<Vm> = (0..n_vms)
        .map(|i| {
            let id = i as u64 + 1;
            Vm {
                id,
                name: vm_name(id),
                request: id / 4,
                template: "linux".into(),
                host: Some(hosts[i % n_hosts.max(1)].name.clone()),
                state: vm_states[i % vm_states.len()].into(),
                created_ms: NOW_MS - (i as u64 % 7200) * 1000,
                updated_ms: NOW_MS - (i as u64 % 3600) * 1000,
            }
        })
        .collect();
    let queue = (0..n_vms / 100)
        .map(|i| Request {
            id: 1_000_000 + i as u64,
            account: format!("ci-{}", i % 7),
            change: Some(format!("I{}", i / 20)),
            requester: format!("ci-{}", i % 7),
            template: "linux".into(),
            count: 1 + (i % 4) as u64,
            vcpus: Some(4),
            memory_mib: Some(8192),
            priority: (i % 3) as i64,
            submitted_ms: NOW_MS - (i as u64 % 600) * 1000,
            state: "waiting".into(),
            why: Some(Why {
                summary: "no host fits".into(),
                reasons: vec![],
            }),
            position: Some(i as u64 + 1),
            eta_ms: Some(NOW_MS + i as u64 * 60_000),
            eta_after_ms: None,
        })
        .collect();
    let breakpoints = vms
        .iter()
        .filter(|v| v.state == "held")
        .map(|v| Breakpoint {
            vm: v.id,
            name: v.name.clone(),
            owner: "ops".into(),
            host: v.host.clone(),
            held_since_ms: v.updated_ms,
            expires_ms: Some(v.updated_ms + 8 * 3_600_000),
        })
        .collect();
    Snapshot {
        now_ms: NOW_MS,
        hosts,
        queue,
        vms,
        breakpoints,
        pulses: Vec::new(),
        accounts: Vec::new(),
    }
}

/// A small PNG "screen" (a gradient with a bar), for screenshot previews without a VM.
pub fn screenshot_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 40, |x, y| {
        if (16..24).contains(&y) {
            image::Rgb([240, 240, 240])
        } else {
            image::Rgb([(x * 4) as u8, (y * 6) as u8, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB image as PNG cannot fail; an empty Vec would show as an error.
    let _ = image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// A short boot log as a Linux guest writes it on its serial console: CR LF line ends and
/// systemd's coloured status words, so what the console shows has been cleaned.
pub fn serial_log(vm: u64) -> String {
    let name = vm_name(vm);
    let ok = "[\u{1b}[0;32m  OK  \u{1b}[0m]";
    [
        "SeaBIOS (version 1.16.3-debian-1.16.3-2)".to_owned(),
        "Booting from Hard Disk...".to_owned(),
        "[    0.000000] Linux version 6.8.0-45-generic (buildd@lcy02-amd64-115)".to_owned(),
        "[    0.000000] Command line: BOOT_IMAGE=/vmlinuz-6.8.0-45-generic root=LABEL=cloudimg-rootfs ro console=ttyS0".to_owned(),
        "[    0.412093] smpboot: Allowing 4 CPUs, 0 hotplug CPUs".to_owned(),
        "[    1.902114] EXT4-fs (vda1): mounted filesystem with ordered data mode".to_owned(),
        "[    2.310552] systemd[1]: Detected virtualization kvm.".to_owned(),
        format!("[    2.311020] systemd[1]: Hostname set to <{name}>."),
        format!("{ok} Started systemd-journald.service - Journal Service."),
        format!("{ok} Reached target local-fs.target - Local File Systems."),
        "         Starting systemd-networkd.service - Network Configuration...".to_owned(),
        format!("{ok} Started systemd-networkd.service - Network Configuration."),
        format!("{ok} Reached target network-online.target - Network is Online."),
        "         Starting cloud-init.service - Cloud-init: Network Stage...".to_owned(),
        format!("{ok} Finished cloud-init.service - Cloud-init: Network Stage."),
        format!("{ok} Started ssh.service - OpenBSD Secure Shell server."),
        "[   14.020118] cloud-init[812]: Cloud-init v. 24.1 finished. Up 14.02 seconds".to_owned(),
        String::new(),
        format!("Ubuntu 24.04 LTS {name} ttyS0"),
        String::new(),
        format!("{name} login: "),
    ]
    .join("\r\n")
}
