//! Where a report comes from: berth's version and commit, and SHA-256 digests of the trace, the
//! fleet and the settings, so that a run can be reproduced and unlike runs are not compared.
//!
//! The digests, as docs/simulation.md documents them:
//! - trace: SHA-256 of the trace file's bytes after gzip decompression (`zcat -f FILE |
//!   sha256sum`); for a synthetic trace made in a sweep, of the JSON lines that `berth trace
//!   synth` writes for the same settings, so both ways of running it agree;
//! - fleet: SHA-256 of the fleet file's bytes, or of the text `--hosts SPEC` for a uniform fleet;
//! - settings: SHA-256 of [`settings_text`], one `key=value` line per simulation and scheduler
//!   setting (the seed excluded: reports carry it apart).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use berth_sched::{Account, Config, FairShare, Quota, QuotaAmounts, ScanOrder, Weights};
use std::sync::{Arc, Mutex};

use berth_traces::{Format, Record, TraceError, TraceHeader, TraceReader, TraceWriter};
use flate2::bufread::MultiGzDecoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{SimConfig, SimError};

/// What a report says about its own making. Reports written before berth recorded it read as
/// the default: empty digests, which `compare` treats as unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// berth's version (Cargo's package version).
    pub berth_version: String,
    /// The git commit berth was built from, or `unknown` (built outside a git checkout).
    pub commit: String,
    pub trace_sha256: String,
    pub fleet_sha256: String,
    pub settings_sha256: String,
    /// Time of the trace's last record: the span over which work arrives.
    pub horizon_ms: u64,
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn io_error(name: &str, source: std::io::Error) -> TraceError {
    TraceError::Io {
        name: name.to_owned(),
        line: 0,
        source,
    }
}

/// SHA-256 of a trace file's content, decompressed if it is gzip (detected by content, as the
/// trace readers do). Reads the file once more; hashing costs far less than replaying.
pub fn trace_file_sha256(path: &Path) -> Result<String, TraceError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| io_error(&name, e))?;
    let mut input = BufReader::with_capacity(64 << 10, file);
    let start = input.fill_buf().map_err(|e| io_error(&name, e))?;
    let mut source: Box<dyn Read> = if start.starts_with(&GZIP_MAGIC) {
        Box::new(MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut hasher = Sha256::new();
    std::io::copy(&mut source, &mut hasher).map_err(|e| io_error(&name, e))?;
    Ok(hex(&hasher.finalize()))
}

/// Opens a trace file for reading and hashes its content (decompressed) as it is read, so that
/// a replay reads and decompresses it once. [`TraceHash::finish`] gives the digest when the
/// reader has reached the end; it equals [`trace_file_sha256`].
pub fn open_hashed(path: &Path, format: Format) -> Result<(TraceReader, TraceHash), TraceError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| io_error(&name, e))?;
    let mut input = BufReader::with_capacity(64 << 10, file);
    let start = input.fill_buf().map_err(|e| io_error(&name, e))?;
    let source: Box<dyn Read + Send> = if start.starts_with(&GZIP_MAGIC) {
        Box::new(MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let hashing = HashingRead {
        inner: source,
        hasher: Arc::clone(&hasher),
    };
    let reader =
        TraceReader::from_reader(BufReader::with_capacity(64 << 10, hashing), name, format)?;
    Ok((reader, TraceHash(hasher)))
}

/// The digest of a trace being read by [`open_hashed`].
pub struct TraceHash(Arc<Mutex<Sha256>>);

impl TraceHash {
    pub fn finish(self) -> String {
        // The lock is only held for an update, which cannot panic: a poisoned lock still holds
        // a usable hasher.
        let hasher = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hex(&hasher.clone().finalize())
    }
}

struct HashingRead {
    inner: Box<dyn Read + Send>,
    hasher: Arc<Mutex<Sha256>>,
}

impl Read for HashingRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .update(&buf[..n]);
        Ok(n)
    }
}

/// SHA-256 of a fleet file's bytes.
pub fn fleet_file_sha256(path: &Path) -> Result<String, SimError> {
    let bytes = std::fs::read(path).map_err(|e| SimError::Fleet {
        source_name: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(sha256_hex(&bytes))
}

/// SHA-256 of the fleet given as `--hosts SPEC`.
pub fn uniform_fleet_sha256(spec: &str) -> String {
    sha256_hex(format!("--hosts {spec}").as_bytes())
}

/// The settings a digest covers, one `key=value` line each, in a fixed order. Every field of
/// `SimConfig` and of the scheduler's `Config` is named here (the destructuring has no `..`,
/// so a new setting does not compile until it is added), except the seed.
pub fn settings_text(config: &SimConfig) -> String {
    let SimConfig {
        policy,
        latency,
        seed: _,
        mtbf_ms,
        mttr_ms,
        dev_delay_ms,
        sched,
        // Measuring estimated starts changes nothing the run decides.
        eta_samples_max: _,
        eta_replay_window_ms: _,
        // Read only by a run from a copied state, which replays no trace.
        run_model: _,
    } = config;
    let Config {
        // The simulation's policy replaces the scheduler config's own.
        policy: _,
        weights: Weights {
            pack,
            spread,
            locality,
        },
        scan,
        candidates_max,
        provisioning_per_host_max,
        probe_failures_max,
        provision_failures_max,
        vm_retries_max,
        aging_step_ms,
        fair_share,
        quotas,
        images,
        warm,
        templates,
    } = sched;
    let scan = match scan {
        ScanOrder::Lowest => "lowest",
        ScanOrder::Rotate => "rotate",
    };
    let mtbf = mtbf_ms.map_or("none".to_owned(), |ms| ms.to_string());
    let mut text = format!(
        "policy={}\nlatency={}\nmtbf_ms={mtbf}\nmttr_ms={mttr_ms}\ndev_delay_ms={dev_delay_ms}\n\
         weights.pack={pack}\nweights.spread={spread}\nweights.locality={locality}\nscan={scan}\n\
         candidates_max={candidates_max}\nprovisioning_per_host_max={provisioning_per_host_max}\n\
         probe_failures_max={probe_failures_max}\nprovision_failures_max={provision_failures_max}\n\
         vm_retries_max={vm_retries_max}\naging_step_ms={aging_step_ms}\n",
        policy.name(),
        latency.name(),
    );
    if let Some(FairShare {
        half_life_ms,
        default_weight,
        accounts,
        age_limit_ms,
    }) = fair_share
    {
        text.push_str(&format!(
            "fair_share.half_life_ms={half_life_ms}\nfair_share.default_weight={default_weight}\n"
        ));
        // Only when set, so that the digests of settings without it stay what they were.
        if let Some(ms) = age_limit_ms {
            text.push_str(&format!("fair_share.age_limit_ms={ms}\n"));
        }
        for Account { name, weight } in accounts {
            text.push_str(&format!("fair_share.account={name:?}:{weight}\n"));
        }
    }
    for Quota {
        account,
        class,
        guarantee,
        borrowing_limit,
    } in quotas
    {
        let show = |a: &QuotaAmounts| {
            let one = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            format!("{}/{}/{}", one(a.vcpus), one(a.memory_mib), one(a.slots))
        };
        text.push_str(&format!(
            "quota={account:?}:{class:?}:{}:{}\n",
            show(guarantee),
            show(borrowing_limit)
        ));
    }
    // Only when set, so that the digests of settings without it stay what they were. What the
    // fleet file says of images is covered by the fleet's digest.
    if let Some(i) = images {
        text.push_str(&format!("images={}\n", i.mode.name()));
        for (name, mib) in &i.sizes {
            text.push_str(&format!("images.size={name:?}:{mib}\n"));
        }
        for c in &i.classes {
            text.push_str(&format!("images.class={c:?}\n"));
        }
        if i.store_pulls_max > 0 {
            text.push_str(&format!("images.store_pulls_max={}\n", i.store_pulls_max));
        }
    }
    // Only when set, so that the digests of settings without pools stay what they were.
    for w in warm {
        let shape = w.shape.map_or("default".to_owned(), |s| {
            format!("{}x{}", s.vcpus, s.memory_mib)
        });
        text.push_str(&format!(
            "warm={:?}:{:?}:{}:{shape}\n",
            w.template, w.class, w.count
        ));
    }
    // Templates of the fleet file are covered by the fleet's digest; these are extra ones.
    for t in templates {
        text.push_str(&format!("template={t:?}\n"));
    }
    text
}

/// SHA-256 of [`settings_text`].
pub fn settings_sha256(config: &SimConfig) -> String {
    sha256_hex(settings_text(config).as_bytes())
}

/// A trace on its way into the simulator: remembers the time of the last record (the
/// horizon) and, when asked, hashes the records as `berth trace synth` would write them.
pub struct Tap<'a> {
    inner: &'a mut dyn Iterator<Item = Result<Record, TraceError>>,
    writer: Option<TraceWriter<HashSink>>,
    last_at_ms: u64,
}

/// A `Write` that only hashes.
struct HashSink(Sha256);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> Tap<'a> {
    /// Only the horizon (the trace's digest comes from its file).
    pub fn new(inner: &'a mut dyn Iterator<Item = Result<Record, TraceError>>) -> Tap<'a> {
        Tap {
            inner,
            writer: None,
            last_at_ms: 0,
        }
    }

    /// The horizon and the digest of the records as berth's JSON lines under `header`.
    pub fn hashing(
        inner: &'a mut dyn Iterator<Item = Result<Record, TraceError>>,
        header: &TraceHeader,
    ) -> Result<Tap<'a>, TraceError> {
        Ok(Tap {
            inner,
            writer: Some(TraceWriter::new(HashSink(Sha256::new()), header)?),
            last_at_ms: 0,
        })
    }

    pub fn horizon_ms(&self) -> u64 {
        self.last_at_ms
    }

    /// The digest of what passed, if hashing; call after the trace has ended.
    pub fn finish(self) -> Result<Option<String>, TraceError> {
        match self.writer {
            Some(w) => Ok(Some(hex(&w.finish()?.0.finalize()))),
            None => Ok(None),
        }
    }
}

impl Iterator for Tap<'_> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        let Ok(record) = item else { return Some(item) };
        self.last_at_ms = self.last_at_ms.max(record.at_ms);
        if let Some(w) = &mut self.writer
            && let Err(e) = w.write(&record)
        {
            return Some(Err(e));
        }
        Some(Ok(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_sched::Policy;
    use berth_traces::{Generator, SynthConfig};

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn records_in(config: &SynthConfig) -> usize {
        Generator::new(config.clone()).unwrap().count()
    }

    #[test]
    fn a_synthetic_trace_hashes_like_its_file_plain_or_gzip() {
        let dir = std::env::temp_dir().join(format!("berth-provenance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = SynthConfig::new(300, 3);
        let generator = Generator::new(config.clone()).unwrap();
        let header = generator.header().clone();
        for name in ["t.jsonl", "t.jsonl.gz"] {
            let path = dir.join(name);
            let mut w = TraceWriter::create(&path, &header).unwrap();
            for r in Generator::new(config.clone()).unwrap() {
                w.write(&r).unwrap();
            }
            w.finish().unwrap();
            let mut records = Generator::new(config.clone()).unwrap().map(Ok);
            let mut tap = Tap::hashing(&mut records, &header).unwrap();
            let last = tap.by_ref().last().unwrap().unwrap().at_ms;
            assert_eq!(tap.horizon_ms(), last);
            let tapped = tap.finish().unwrap();
            assert_eq!(tapped, Some(trace_file_sha256(&path).unwrap()), "{name}");
            let (reader, hash) = open_hashed(&path, Format::Berth).unwrap();
            assert_eq!(reader.count(), records_in(&config));
            assert_eq!(tapped, Some(hash.finish()), "{name}");
        }
    }

    #[test]
    fn settings_digest_ignores_the_seed_but_not_the_policy() {
        let a = SimConfig::default();
        let b = SimConfig {
            seed: 99,
            ..SimConfig::default()
        };
        let c = SimConfig {
            policy: Policy::Fcfs,
            ..SimConfig::default()
        };
        assert_eq!(settings_sha256(&a), settings_sha256(&b));
        assert_ne!(settings_sha256(&a), settings_sha256(&c));
        assert!(settings_text(&a).contains("candidates_max=8\n"));
    }
}
