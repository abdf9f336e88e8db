//! What a start may do with VMs on the hosts that its journal cannot account for: the
//! operator's choice on `berth serve`, read by the data directory's checks and by
//! reconciliation.

/// What a start may do with VMs on the hosts that the journal cannot account for (an empty
/// or lost database, or VMs another berth created). Without a choice, berth keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrphanStart {
    /// Keep them and say so; refuse to start on a journal that never created a VM while the
    /// hosts run berth VMs.
    #[default]
    Refuse,
    /// `--adopt-orphans`: keep every VM found, recorded as kept orphans, and start.
    Adopt,
    /// `--destroy-orphans`: destroy every VM found that the journal does not have, and start.
    Destroy,
}

impl OrphanStart {
    /// The command-line flag that chose it, for the audit log.
    pub fn flag(self) -> &'static str {
        match self {
            OrphanStart::Refuse => "",
            OrphanStart::Adopt => "--adopt-orphans",
            OrphanStart::Destroy => "--destroy-orphans",
        }
    }
}
