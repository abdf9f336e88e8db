//! Drivers carry out the scheduler's actions on real hypervisors (libvirt, Parallels over SSH) and on simulated hosts. Not built yet: see the open driver issues.
