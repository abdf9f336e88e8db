//! Trace formats: berth's own line format, importers for SWF and Azure VM traces, and the synthetic CI workload generator.
