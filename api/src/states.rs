//! The names of states and roles, as every answer spells them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A name that is not one of an enum's: what it was and what it was meant to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

impl std::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not a {}", self.name, self.what)
    }
}

impl std::error::Error for UnknownName {}

/// Declares a string-named enum: serde names, `name()`, `ALL` and `FromStr`.
macro_rules! named {
    ($(#[$doc:meta])* $ty:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident = $name:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $ty {
            $($(#[$vdoc])* #[serde(rename = $name)] $variant),+
        }

        impl $ty {
            /// Every value, in order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<$ty, UnknownName> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(UnknownName { what: $what, name: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named!(
    /// What a token may do.
    Role, "role", {
        /// Read everything, change nothing.
        ReadOnly = "read-only",
        /// Everything: submit, cancel, results, breakpoints, hosts.
        Operator = "operator",
    }
);

named!(
    /// A host's state.
    HostState, "host state", {
        Unknown = "unknown",
        Ready = "ready",
        Draining = "draining",
        Maintenance = "maintenance",
        Offline = "offline",
        Error = "error",
    }
);

named!(
    /// A VM's state.
    VmState, "vm state", {
        Queued = "queued",
        Placed = "placed",
        Provisioning = "provisioning",
        Booting = "booting",
        Running = "running",
        Held = "held",
        Releasing = "releasing",
        Done = "done",
        Failed = "failed",
        Lost = "lost",
        Cancelled = "cancelled",
    }
);

named!(
    /// A request's state.
    RequestState, "request state", {
        Waiting = "waiting",
        Active = "active",
        Done = "done",
        Failed = "failed",
        Rejected = "rejected",
        Cancelled = "cancelled",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for s in VmState::ALL {
            let json = serde_json::to_string(s).expect("serialises");
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(s.name().parse::<VmState>(), Ok(*s));
        }
        assert_eq!("read-only".parse::<Role>(), Ok(Role::ReadOnly));
        let err = "sleeping".parse::<HostState>().expect_err("unknown");
        assert_eq!(err.to_string(), "`sleeping` is not a host state");
        assert!(serde_json::from_str::<RequestState>("\"paused\"").is_err());
    }
}
