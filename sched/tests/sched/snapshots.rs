//! Placement decisions as data: a fixture in, the rendered decisions out (see `fixture.rs`).

use expect_test::{Expect, expect};

use crate::fixture::run;

fn check(fixture: &str, expected: Expect) {
    expected.assert_eq(&run(fixture));
}

#[test]
fn pack_fills_the_fullest_host_first() {
    check(
        "
        template linux cpu=2 mem=4G
        policy greedy | weights pack=1 spread=0 locality=0
        host h1 cpu=8 mem=32G
        host h2 cpu=8 mem=32G
        request r1 count=3
        request r2 cpu=4
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r1 -> h1
            vm3 r1 -> h1
            vm4 r2 -> h2
        "#]],
    );
}

#[test]
fn spread_takes_the_emptiest_host() {
    check(
        "
        template linux cpu=2 mem=4G
        policy greedy | weights pack=0 spread=1 locality=0
        host h1 cpu=8 mem=32G
        host h2 cpu=8 mem=32G
        host h3 cpu=16 mem=64G
        request r1 count=4
        ",
        expect![[r#"
            vm1 r1 -> h3
            vm2 r1 -> h1
            vm3 r1 -> h2
            vm4 r1 -> h3
        "#]],
    );
}

#[test]
fn rotate_starts_each_search_after_the_host_chosen_last() {
    // With one candidate per search, the window moves round robin over equal hosts.
    check(
        "
        template linux cpu=2 mem=4G
        policy greedy | weights pack=0 spread=0 locality=0 | scan rotate | limit candidates=1
        host h1 cpu=8 mem=32G
        host h2 cpu=8 mem=32G
        host h3 cpu=8 mem=32G
        request r1
        request r2
        request r3
        request r4 count=2
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r2 -> h2
            vm3 r3 -> h3
            vm4 r4 -> h1
            vm5 r4 -> h1
        "#]],
    );
}

#[test]
fn rotate_with_a_window_covering_the_fleet_breaks_ties_round_the_ring() {
    // Rotation moves where the candidate window starts; ties among candidates go to the lowest
    // host index, so when every host is a candidate, equal scores pick h1.
    check(
        "
        template linux cpu=2 mem=4G
        policy greedy | weights pack=0 spread=0 locality=0 | scan rotate | limit candidates=8
        host h1 cpu=8 mem=32G
        host h2 cpu=8 mem=32G
        request r1
        request r2
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r2 -> h2
        "#]],
    );
}

#[test]
fn lowest_scan_without_weights_is_first_fit() {
    check(
        "
        template linux cpu=2 mem=4G
        policy greedy | weights pack=0 spread=0 locality=0 | scan lowest
        host h1 cpu=4 mem=32G
        host h2 cpu=8 mem=32G
        request r1
        request r2
        request r3
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r2 -> h1
            vm3 r3 -> h2
        "#]],
    );
}

#[test]
fn image_locality_prefers_hosts_holding_the_base_image() {
    check(
        "
        template linux cpu=2 mem=4G image=linux-base
        template win cpu=2 mem=4G image=win-base
        policy greedy | weights pack=0 spread=0 locality=1
        host h1 cpu=8 mem=32G images=win-base
        host h2 cpu=8 mem=32G images=linux-base
        request r1 template=linux count=2
        request r2 template=win
        ",
        expect![[r#"
            vm1 r1 -> h2
            vm2 r1 -> h2
            vm3 r2 -> h1
        "#]],
    );
}

#[test]
fn locality_outweighs_pack_when_weighted_higher() {
    check(
        "
        template linux cpu=2 mem=4G image=linux-base
        policy greedy | weights pack=1 spread=0 locality=2
        host h1 cpu=8 mem=32G
        host h2 cpu=8 mem=32G images=linux-base
        request r1 cpu=6
        request r2 template=linux
        ",
        expect![[r#"
            vm1 r1 -> h2
            vm2 r2 -> h2
        "#]],
    );
}

#[test]
fn labels_constrain_hosts_and_a_missing_label_never_fits() {
    check(
        "
        template linux cpu=2 mem=4G
        host h1 cpu=8 mem=32G labels=arch=x86_64,pool=ci
        host h2 cpu=8 mem=32G labels=arch=aarch64,pool=ci
        request r1 count=2 labels=arch=aarch64
        request r2 labels=pool=ci,arch=x86_64
        request r3 labels=arch=riscv64
        ",
        expect![[r#"
            vm1 r1 -> h2
            vm2 r1 -> h2
            vm3 r2 -> h1
            r3 rejected: no host could ever fit it: 1 × 2 vcpus, 4096 MiB of `linux`, labels arch=riscv64: 2 hosts lack the labels
        "#]],
    );
}

#[test]
fn templates_run_only_on_their_drivers() {
    check(
        "
        template linux cpu=2 mem=4G drivers=libvirt,sim
        template macos cpu=4 mem=8G drivers=parallels os=macos
        host kvm1 cpu=8 mem=32G driver=libvirt
        host prl1 cpu=8 mem=32G driver=parallels
        request r1 template=linux count=2
        request r2 template=macos
        request r3 template=linux count=3 cpu=4
        ",
        expect![[r#"
            vm1 r1 -> kvm1
            vm2 r1 -> kvm1
            vm3 r2 -> prl1
            vm4 r3 -> kvm1
            r3 waits: first in line, to start in 1h00m (01:00:00 UTC) · 0/2 hosts fit: 1 wrong driver, 1 lack vcpus · 2 of 3 × 4 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn a_template_without_a_matching_driver_never_fits() {
    check(
        "
        template macos cpu=4 mem=8G drivers=parallels os=macos
        host kvm1 cpu=64 mem=256G driver=libvirt
        host sim1 cpu=64 mem=256G driver=sim
        request r1 template=macos
        ",
        expect![[r#"
            r1 rejected: no host could ever fit it: 1 × 4 vcpus, 8192 MiB of `macos`: 2 hosts have the wrong driver
        "#]],
    );
}

#[test]
fn cpu_overcommit_stretches_vcpus() {
    check(
        "
        template linux cpu=2 mem=1G
        policy greedy
        host h1 cpu=4 mem=32G overcommit=2.0
        host h2 cpu=4 mem=32G
        request r1 count=6
        request r2 count=2
        ",
        expect![[r#"
            vm1 r1 -> h2
            vm2 r1 -> h2
            vm3 r1 -> h1
            vm4 r1 -> h1
            vm5 r1 -> h1
            vm6 r1 -> h1
            r2 waits: no room · 0/2 hosts fit: 2 lack vcpus · 2 of 2 × 2 vcpus, 1024 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn memory_overcommit_stretches_memory() {
    check(
        "
        template linux cpu=1 mem=8G
        policy greedy | limit provisioning=10
        host h1 cpu=32 mem=16G mem-overcommit=1.5
        request r1 count=4
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r1 -> h1
            vm3 r1 -> h1
            r1 waits: no room · 0/1 hosts fit: 1 lack memory · 1 of 4 × 1 vcpus, 8192 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn a_vm_larger_than_every_host_is_rejected_at_submit() {
    check(
        "
        template linux cpu=2 mem=4G
        host h1 cpu=8 mem=32G overcommit=2.0
        host h2 cpu=16 mem=16G
        request r1 cpu=32
        request r2 mem=64G
        request r3 cpu=16 mem=32G
        request r4 cpu=16 mem=16G
        ",
        expect![[r#"
            r1 rejected: no host could ever fit it: 1 × 32 vcpus, 4096 MiB of `linux`: 2 hosts have too few vcpus
            r2 rejected: no host could ever fit it: 1 × 2 vcpus, 65536 MiB of `linux`: 2 hosts have too little memory
            vm1 r3 -> h1
            vm2 r4 -> h2
        "#]],
    );
}

#[test]
fn two_macos_guests_per_mac() {
    check(
        "
        template macos cpu=4 mem=8G drivers=parallels,sim slot=macos os=macos
        template linux cpu=2 mem=4G
        policy greedy
        host mac1 cpu=32 mem=128G slots=macos:2
        host mac2 cpu=32 mem=128G slots=macos:2
        host lin1 cpu=32 mem=128G
        request r1 template=macos count=5
        request r2 template=linux count=2
        ",
        expect![[r#"
            vm1 r1 -> mac1
            vm2 r1 -> mac1
            vm3 r1 -> mac2
            vm4 r1 -> mac2
            vm6 r2 -> mac1
            vm7 r2 -> mac1
            r1 waits: no room · 0/3 hosts fit: 2 slots full, 1 no slot of that kind · 1 of 5 × 4 vcpus, 8192 MiB of `macos` wait
        "#]],
    );
}

#[test]
fn a_gang_larger_than_every_slot_never_fits() {
    check(
        "
        template macos cpu=4 mem=8G slot=macos os=macos
        host mac1 cpu=32 mem=128G slots=macos:2
        host mac2 cpu=32 mem=128G slots=macos:2
        host lin1 cpu=32 mem=128G
        request r1 template=macos count=5 gang
        ",
        expect![[r#"
            r1 rejected: no host could ever fit it: 5 × 4 vcpus, 8192 MiB of `macos` as a gang: 1 host has no such slot, the hosts that could take it hold only 4 at once
        "#]],
    );
}

#[test]
fn provisioning_concurrency_is_bounded_per_host() {
    check(
        "
        template linux cpu=1 mem=1G
        policy greedy | limit provisioning=2
        host h1 cpu=64 mem=256G
        request r1 count=5
        start r1
        start r1
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r1 -> h1
            > start r1
            vm3 r1 -> h1
            vm4 r1 -> h1
            > start r1
            vm5 r1 -> h1
        "#]],
    );
}

#[test]
fn a_gang_places_all_its_vms_or_none() {
    check(
        "
        template linux cpu=4 mem=4G
        policy greedy
        host h1 cpu=8 mem=32G
        host h2 cpu=8 mem=32G
        request r1 count=3 gang
        request r2 count=2 gang
        request r3 count=1
        start r1
        finish r1
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r1 -> h1
            vm3 r1 -> h2
            vm6 r3 -> h2
            > start r1
            > finish r1
            vm4 r2 -> h2
            vm5 r2 -> h1
            r1 done
        "#]],
    );
}

#[test]
fn a_gang_larger_than_the_fleet_is_rejected_with_the_room_it_has() {
    check(
        "
        template linux cpu=4 mem=4G
        host h1 cpu=8 mem=32G
        host h2 cpu=8 mem=32G
        request r1 count=5 gang
        request r2 count=5
        ",
        expect![[r#"
            r1 rejected: no host could ever fit it: 5 × 4 vcpus, 4096 MiB of `linux` as a gang: the hosts that could take it hold only 4 at once
            vm1 r2 -> h1
            vm2 r2 -> h1
            vm3 r2 -> h2
            vm4 r2 -> h2
            r2 waits: first in line, to start in 1h00m (01:00:00 UTC) · 0/2 hosts fit: 2 lack vcpus · 1 of 5 × 4 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn higher_priority_goes_first() {
    check(
        "
        template linux cpu=4 mem=4G
        policy greedy | limit aging=0
        host h1 cpu=4 mem=32G
        request r1
        request r2
        request r3 prio=5
        request r4 prio=-1
        start r1
        finish r1
        ",
        expect![[r#"
            vm1 r1 -> h1
            > start r1
            > finish r1
            vm3 r3 -> h1
            r1 done
            r2 waits: no room · 0/1 hosts fit: 1 lack vcpus · 1 of 1 × 4 vcpus, 4096 MiB of `linux` wait
            r4 waits: no room · 0/1 hosts fit: 1 lack vcpus · 1 of 1 × 4 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn aging_lets_an_old_request_pass_a_newer_higher_priority_one() {
    check(
        "
        template linux cpu=4 mem=4G
        policy greedy | limit aging=10m
        host h1 cpu=4 mem=32G
        request r1
        request r2
        at 30m
        request r3 prio=2
        start r1
        finish r1
        ",
        expect![[r#"
            vm1 r1 -> h1
            > at 1800000 ms
            > start r1
            > finish r1
            vm2 r2 -> h1
            r1 done
            r3 waits: no room · 0/1 hosts fit: 1 lack vcpus · 1 of 1 × 4 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn fcfs_blocks_behind_the_head() {
    check(
        "
        template linux cpu=2 mem=4G
        policy fcfs
        host h1 cpu=8 mem=32G
        request r1 cpu=6
        request r2 cpu=4
        request r3 cpu=2
        start r1
        finish r1
        ",
        expect![[r#"
            vm1 r1 -> h1
            > start r1
            > finish r1
            vm2 r2 -> h1
            vm3 r3 -> h1
            r1 done
        "#]],
    );
}

#[test]
fn easy_backfills_a_short_job_but_not_one_that_delays_the_head() {
    check(
        "
        template linux cpu=2 mem=4G
        policy easy
        host h1 cpu=10 mem=64G
        request r1 cpu=6 expect=100s
        request r2 cpu=8 expect=100s
        request r3 cpu=2 expect=50s
        request r4 cpu=2 expect=500s
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm3 r3 -> h1
            r2 waits: first in line, to start in 1m40s (00:01:40 UTC) · 0/1 hosts fit: 1 lack vcpus · 1 of 1 × 8 vcpus, 4096 MiB of `linux` wait
            r4 waits: would delay r2, due to start in 1m40s (00:01:40 UTC) · 1/1 hosts fit · 1 of 1 × 2 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn easy_backfills_a_long_job_on_capacity_the_head_does_not_need() {
    check(
        "
        template linux cpu=2 mem=4G
        policy easy
        host h1 cpu=8 mem=32G
        host h2 cpu=4 mem=32G
        request r1 cpu=8 expect=100s
        request r2 cpu=8 expect=100s
        request r3 cpu=4 expect=1h
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm3 r3 -> h2
            r2 waits: first in line, to start in 1m40s (00:01:40 UTC) · 0/2 hosts fit: 2 lack vcpus · 1 of 1 × 8 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn greedy_places_whatever_fits() {
    check(
        "
        template linux cpu=2 mem=4G
        policy greedy
        host h1 cpu=10 mem=64G
        request r1 cpu=6 expect=100s
        request r2 cpu=8 expect=100s
        request r3 cpu=2 expect=50s
        request r4 cpu=2 expect=500s
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm3 r3 -> h1
            vm4 r4 -> h1
            r2 waits: no room · 0/1 hosts fit: 1 lack vcpus · 1 of 1 × 8 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn why_counts_hosts_by_the_first_filter_they_fail() {
    check(
        "
        template linux cpu=4 mem=16G drivers=libvirt,sim
        policy greedy
        host h1 cpu=4 mem=64G
        host h2 cpu=8 mem=8G
        host h3 cpu=8 mem=64G driver=parallels
        host h4 cpu=8 mem=64G
        host h5 cpu=8 mem=64G
        request r1 count=2
        drain h4
        request r2 count=3
        request r3 labels=pool=ci
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r1 -> h4
            > drain h4
            h4 ready -> draining: drained by operator
            vm3 r2 -> h5
            vm4 r2 -> h5
            r3 rejected: no host could ever fit it: 1 × 4 vcpus, 16384 MiB of `linux`, labels pool=ci: 1 host has the wrong driver, 4 hosts lack the labels
            r2 waits: no room · 0/5 hosts fit: 2 lack vcpus, 1 draining, 1 wrong driver, 1 lack memory · 1 of 3 × 4 vcpus, 16384 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn a_pending_deadline_fails_a_request_still_waiting() {
    check(
        "
        template linux cpu=8 mem=4G
        host h1 cpu=8 mem=32G
        request r1
        request r2 deadline=30s
        at 29s
        at 30s
        ",
        expect![[r#"
            vm1 r1 -> h1
            > at 29000 ms
            > at 30000 ms
            vm2 failed: pending deadline passed
            r2 failed: pending deadline passed
        "#]],
    );
}

#[test]
fn draining_the_only_fitting_host_leaves_requests_waiting_not_rejected() {
    check(
        "
        template linux cpu=2 mem=4G
        host h1 cpu=8 mem=32G
        host h2 cpu=2 mem=4G
        request r1 cpu=4
        drain h1
        request r2 cpu=4
        why
        start r1
        finish r1
        resume h1
        ",
        expect![[r#"
            vm1 r1 -> h1
            > drain h1
            h1 ready -> draining: drained by operator
            > why
            r2 waits: first in line, but no room even once every running vm ends · 0/2 hosts fit: 1 draining, 1 lack vcpus · 1 of 1 × 4 vcpus, 4096 MiB of `linux` wait
            > start r1
            > finish r1
            h1 draining -> maintenance: last vm ended while draining
            r1 done
            > resume h1
            vm2 r2 -> h1
            h1 maintenance -> ready: resumed by operator
        "#]],
    );
}

#[test]
fn fcfs_serves_the_next_head_when_the_head_is_cancelled() {
    check(
        "
        template linux cpu=2 mem=4G
        policy fcfs
        host h1 cpu=4 mem=32G
        host big cpu=16 mem=64G
        drain big
        request r1 cpu=16
        request r2
        why
        cancel r1
        ",
        expect![[r#"
            > drain big
            big ready -> draining: drained by operator
            big draining -> maintenance: last vm ended while draining
            > why
            r1 waits: no room · 0/2 hosts fit: 1 in maintenance, 1 lack vcpus · 1 of 1 × 16 vcpus, 4096 MiB of `linux` wait
            r2 waits: behind r1 (strict fcfs) · 1/2 hosts fit: 1 in maintenance · 1 of 1 × 2 vcpus, 4096 MiB of `linux` wait
            > cancel r1
            vm2 r2 -> h1
            r1 cancelled: cancelled
        "#]],
    );
}

#[test]
fn fcfs_serves_a_request_that_aging_moved_to_the_head() {
    // Aging adds a level per 10 min waited. At 26 min r3 (3 + 0) leads r2 (0 + 2), so r2 stays
    // behind though it fits; at 30 min r2 (0 + 3) ties r3 (3 + 0) and, older, becomes the head:
    // the tick alone must start it.
    check(
        "
        template linux cpu=2 mem=4G
        policy fcfs | limit aging=10m
        host h1 cpu=4 mem=32G
        host big cpu=16 mem=64G
        drain big
        request r1 cpu=4
        request r2
        at 25m
        request r3 cpu=16 prio=3
        at 26m
        start r1
        finish r1
        why
        at 30m
        ",
        expect![[r#"
            > drain big
            big ready -> draining: drained by operator
            big draining -> maintenance: last vm ended while draining
            vm1 r1 -> h1
            > at 1500000 ms
            > at 1560000 ms
            > start r1
            > finish r1
            r1 done
            > why
            r3 waits: no room · 0/2 hosts fit: 1 in maintenance, 1 lack vcpus · 1 of 1 × 16 vcpus, 4096 MiB of `linux` wait
            r2 waits: behind r3 (strict fcfs) · 1/2 hosts fit: 1 in maintenance · 1 of 1 × 2 vcpus, 4096 MiB of `linux` wait
            > at 1800000 ms
            vm2 r2 -> h1
            r3 waits: no room · 0/2 hosts fit: 1 in maintenance, 1 lack vcpus · 1 of 1 × 16 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn easy_counts_provisioning_and_boot_in_the_expected_start() {
    check(
        "
        template linux cpu=4 mem=4G provision=30s boot=60s run=10m
        policy easy
        host h1 cpu=4 mem=32G
        request r1 expect=100s
        request r2
        ",
        expect![[r#"
            vm1 r1 -> h1
            r2 waits: first in line, to start in 3m10s (00:03:10 UTC) · 0/1 hosts fit: 1 lack vcpus · 1 of 1 × 4 vcpus, 4096 MiB of `linux` wait
        "#]],
    );
}

#[test]
fn offline_loses_vms_and_their_replacements_go_elsewhere() {
    check(
        "
        template linux cpu=2 mem=4G
        policy greedy
        host h1 cpu=4 mem=32G
        host h2 cpu=4 mem=32G
        request r1 count=2 hold=alice:1h
        start r1
        offline h1
        ",
        expect![[r#"
            vm1 r1 -> h1
            vm2 r1 -> h1
            > start r1
            > offline h1
            vm3 r1 -> h2
            vm4 r1 -> h2
            h1 ready -> offline: taken offline by operator
            vm1 lost: host h1 lost
            vm2 lost: host h1 lost
        "#]],
    );
}
