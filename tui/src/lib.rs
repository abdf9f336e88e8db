//! The operations console (ratatui). Not built yet: see the console issue.
