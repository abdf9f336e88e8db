//! The live control plane (tokio, SQLite, HTTP API). Not built yet: see the daemon issue.
