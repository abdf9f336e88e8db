//! The discrete-event simulator that drives the real `sched` core on simulated hosts.
