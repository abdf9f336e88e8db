//! What the console shows: plain data read from a source (hosts, queue, VMs, breakpoints,
//! events, details), with no drawing and no I/O.

/// The daemon's view of the fleet at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The daemon's clock when the snapshot was taken (ms since the Unix epoch).
    pub now_ms: u64,
    pub hosts: Vec<Host>,
    /// Waiting requests, in queue order.
    pub queue: Vec<Request>,
    /// VMs that have not ended.
    pub vms: Vec<Vm>,
    pub breakpoints: Vec<Breakpoint>,
    /// The daemon's pulses of the last hour, oldest first (`GET /v1/pulses`): what the
    /// overview plots, so the plots need no history of the console's own.
    pub pulses: Vec<berth_api::Pulse>,
    /// Accounts under fair share in the order the queue serves them (`GET /v1/accounts`);
    /// empty without fair share.
    pub accounts: Vec<berth_api::AccountRow>,
}

/// The window of pulses the console keeps and plots: an hour.
pub const PULSE_WINDOW_MS: u64 = 3_600_000;

/// Pulses put into `n` equal bins of time ending at `end_ms` and spanning `window_ms`, oldest
/// bin first: each bin holds the largest value of the pulses taken in it, or `None` when none
/// was (the daemon was down, or not yet sampling). A pulse at `end_ms` falls in the last bin.
pub fn time_bins(
    pulses: &[berth_api::Pulse],
    end_ms: u64,
    window_ms: u64,
    n: usize,
    value: impl Fn(&berth_api::Pulse) -> Option<u64>,
) -> Vec<Option<u64>> {
    let mut bins = vec![None; n];
    if n == 0 || window_ms == 0 {
        return bins;
    }
    let start_ms = end_ms.saturating_sub(window_ms);
    for p in pulses {
        if p.at_ms <= start_ms || p.at_ms > end_ms {
            continue;
        }
        let Some(v) = value(p) else { continue };
        // Bin i covers (start + i·w/n, start + (i+1)·w/n].
        let offset = u128::from(p.at_ms - start_ms - 1);
        let i = (offset * n as u128 / u128::from(window_ms)) as usize;
        let slot = &mut bins[i.min(n - 1)];
        *slot = Some(slot.map_or(v, |old: u64| old.max(v)));
    }
    bins
}

impl EventRow {
    /// Whether the row is an operator's doing: an action from this console, or a host change
    /// the daemon says an operator made (drained, resumed or taken offline by operator).
    pub fn is_operator_action(&self) -> bool {
        self.kind == "action" || self.text.contains("by operator")
    }
}

impl Snapshot {
    /// The longest wait in the queue, in ms.
    pub fn oldest_wait_ms(&self) -> Option<u64> {
        self.queue
            .iter()
            .map(|r| self.now_ms.saturating_sub(r.submitted_ms))
            .max()
    }
}

/// A host as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub name: String,
    pub driver: String,
    /// `ready`, `draining`, `maintenance`, `error` or `unknown`.
    pub state: String,
    /// The capacity class (the `class` label, else the name without its trailing number).
    pub class: String,
    pub cpu_milli: u64,
    pub cpu_used_milli: u64,
    pub memory_mib: u64,
    pub memory_used_mib: u64,
    pub n_vms: u64,
    pub labels: Vec<String>,
    pub last_probe_ms: Option<u64>,
    /// Counted slots by kind (`macos`: two guests per Mac).
    pub slots: Vec<Slot>,
    /// The base images it holds, by name.
    pub images: Vec<String>,
    /// The images being pulled to it now, by name.
    pub pulling: Vec<String>,
}

/// One kind of counted slot on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub kind: String,
    pub capacity: i64,
    pub used: i64,
}

impl Host {
    /// The IMG column: how many base images it holds, and `+N↓` for pulls running to it
    /// (`2+1↓`); `-` for none of either.
    pub fn images_text(&self) -> String {
        match (self.images.len(), self.pulling.len()) {
            (0, 0) => "-".into(),
            (n, 0) => n.to_string(),
            (n, p) => format!("{n}+{p}↓"),
        }
    }

    /// `macos 1/2`, kinds joined by commas; `-` for a host without slots.
    pub fn slots_text(&self) -> String {
        if self.slots.is_empty() {
            return "-".into();
        }
        self.slots
            .iter()
            .map(|s| format!("{} {}/{}", s.kind, s.used, s.capacity))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The class of a host, by the API's one rule (`berth_api::host_class`): its `class` label,
/// else its `pool` label, else its name without a trailing `-N`.
pub fn host_class(name: &str, labels: &[String]) -> String {
    let labels = labels.iter().filter_map(|l| l.split_once('='));
    berth_api::host_class(name, labels).to_owned()
}

/// Why a request waits, as the scheduler explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Why {
    pub summary: String,
    /// Reasons hosts turned the request down, with how many hosts gave each.
    pub reasons: Vec<(String, u64)>,
}

/// A request waiting in the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: u64,
    pub requester: String,
    /// The account charged for it (its requester unless it named one).
    pub account: String,
    /// The staged change it belongs to, if it named one.
    pub change: Option<String>,
    pub template: String,
    pub count: u64,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub priority: i64,
    pub submitted_ms: u64,
    pub state: String,
    pub why: Option<Why>,
    /// Its place in the order of service, 1 first, as the daemon last estimated.
    pub position: Option<u64>,
    /// When it is expected to start (ms since the epoch), or, past the estimate's bounds,
    /// a time it starts later than.
    pub eta_ms: Option<u64>,
    pub eta_after_ms: Option<u64>,
}

impl Request {
    /// When it is expected to start, at `now_ms`: `~4m`, `<1m`, `now`, `>~1d00h`, `-`.
    pub fn eta_text(&self, now_ms: u64) -> String {
        eta_cell(self.eta_ms, self.eta_after_ms, now_ms)
    }

    /// `3× linux 4c/8G`.
    pub fn shape(&self) -> String {
        let mut s = format!("{}× {}", self.count, self.template);
        if let (Some(c), Some(m)) = (self.vcpus, self.memory_mib) {
            s.push_str(&format!(" {c}c/{}", mib(m)));
        }
        s
    }
}

/// A VM that has not ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Vm {
    pub id: u64,
    pub name: String,
    pub request: u64,
    pub template: String,
    pub host: Option<String>,
    pub state: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// A VM held after a failure so someone can look at it.
#[derive(Clone, Debug, PartialEq)]
pub struct Breakpoint {
    pub vm: u64,
    pub name: String,
    pub owner: String,
    pub host: Option<String>,
    pub held_since_ms: u64,
    /// When the hold ends by itself, if known.
    pub expires_ms: Option<u64>,
}

/// One line of the event log: a state change or an operator action.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub at_ms: u64,
    /// `vm`, `request`, `host`, `action` or `stream`.
    pub kind: String,
    /// What it concerns (`berth-vm12`, `r7`, `sim-small-1`).
    pub subject: String,
    pub text: String,
}

/// What a detail view is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Host(String),
    Request(u64),
    Vm(u64),
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Host(h) => format!("host {h}"),
            Target::Request(r) => format!("request r{r}"),
            Target::Vm(v) => format!("vm {}", vm_name(*v)),
        }
    }

    /// The subject string event rows use for this target.
    pub fn subject(&self) -> String {
        match self {
            Target::Host(h) => h.clone(),
            Target::Request(r) => format!("r{r}"),
            Target::Vm(v) => vm_name(*v),
        }
    }
}

/// The name the daemon and drivers give a VM.
pub fn vm_name(id: u64) -> String {
    format!("berth-vm{id}")
}

/// One step in a detail view's history.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineEntry {
    pub at_ms: u64,
    pub text: String,
}

/// How to reach a VM's graphical console.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsoleInfo {
    pub vm: u64,
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

impl ConsoleInfo {
    pub fn vnc_url(&self) -> String {
        format!("vnc://{}:{}", self.host, self.port)
    }
}

/// A detail view's content, as the source gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Detail {
    pub target: Target,
    pub fields: Vec<(String, String)>,
    pub timeline: Vec<TimelineEntry>,
    /// The console panel: an address, or why there is none.
    pub console: Option<Result<ConsoleInfo, String>>,
}

/// The queue wait over one simulated run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitStats {
    pub mean_wait_ms: u64,
    pub p95_wait_ms: u64,
    pub max_wait_ms: u64,
    /// Requests still waiting at the end of the horizon.
    pub still_waiting: u64,
}

/// The simulator's forecast of a drain: queue wait with and without it, for the requests
/// waiting now and for the arrivals the run assumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainPrediction {
    pub hosts: Vec<String>,
    pub horizon_ms: u64,
    /// The requests waiting now.
    pub without: WaitStats,
    pub with: WaitStats,
    /// The requests of the last horizon, submitted again over the next one. `None` when
    /// there were none to replay, or when the daemon forecasts the queue alone.
    pub arrivals: Option<ArrivalForecast>,
}

/// The queue wait of the arrivals a forecast replays, with and without the drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrivalForecast {
    /// How many requests were replayed.
    pub requests: u64,
    pub without: WaitStats,
    pub with: WaitStats,
}

/// A change the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Drain(String),
    Resume(String),
    Offline(String),
    Cancel(u64),
    Release(u64),
    Extend { vm: u64, seconds: u64 },
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Drain(h) => format!("drain {h}"),
            Action::Resume(h) => format!("resume {h}"),
            Action::Offline(h) => format!("offline {h}"),
            Action::Cancel(r) => format!("cancel r{r}"),
            Action::Release(v) => format!("release {}", vm_name(*v)),
            Action::Extend { vm, seconds } => {
                format!("extend {} by {}", vm_name(*vm), duration(seconds * 1000))
            }
        }
    }
}

/// `512M`, `8G`, `1.5T`.
pub fn mib(m: u64) -> String {
    if m >= 1024 * 1024 && m.is_multiple_of(1024 * 1024) {
        format!("{}T", m / (1024 * 1024))
    } else if m >= 1024 && m.is_multiple_of(1024) {
        format!("{}G", m / 1024)
    } else if m >= 1024 {
        format!("{:.1}G", m as f64 / 1024.0)
    } else {
        format!("{m}M")
    }
}

/// A byte count read short: `900B`, `64K`, `1.5M`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "K", "M", "G"];
    let (mut unit, mut scale) = (0, 1u64);
    while unit + 1 < UNITS.len() && n >= scale * 1024 {
        scale *= 1024;
        unit += 1;
    }
    if n.is_multiple_of(scale) {
        format!("{}{}", n / scale, UNITS[unit])
    } else {
        format!("{:.1}{}", n as f64 / scale as f64, UNITS[unit])
    }
}

/// Columns between tab stops in a serial log.
const TAB_COLUMNS: usize = 8;

/// A guest's serial output made safe to draw: escape sequences (CSI, OSC, DCS and the rest,
/// in their 7-bit and 8-bit forms) and control characters are removed, tabs become spaces,
/// and a carriage return or backspace moves back along the line the way a terminal would, so
/// a progress bar shows as its last state. A guest controls these bytes: written raw, they
/// could clear the operator's screen, move the cursor, retitle the window or set the
/// clipboard (OSC 52).
pub fn clean_serial(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut line: Vec<char> = Vec::new();
    let mut col: usize = 0;
    let mut chars = text.chars().peekable();
    let put = |line: &mut Vec<char>, col: &mut usize, c: char| {
        match line.get_mut(*col) {
            Some(slot) => *slot = c,
            None => line.push(c),
        }
        *col += 1;
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.extend(line.drain(..));
                out.push('\n');
                col = 0;
            }
            '\r' => col = 0,
            '\u{8}' => col = col.saturating_sub(1),
            '\t' => {
                let stop = (col / TAB_COLUMNS + 1) * TAB_COLUMNS;
                while col < stop {
                    put(&mut line, &mut col, ' ');
                }
            }
            '\u{1b}' => skip_escape(&mut chars),
            // The 8-bit forms of CSI and of the string controls (DCS, SOS, OSC, PM, APC).
            '\u{9b}' => skip_csi(&mut chars),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if c.is_control() => {}
            c => put(&mut line, &mut col, c),
        }
    }
    out.extend(line);
    out
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Skips what follows an ESC: a CSI or string control, or a short sequence (`ESC c`,
/// `ESC ( B`). A newline is never part of a sequence, so a broken one cannot hide lines.
fn skip_escape(chars: &mut Chars) {
    match chars.peek() {
        Some('[') => {
            chars.next();
            skip_csi(chars);
        }
        Some(']' | 'P' | 'X' | '^' | '_') => {
            chars.next();
            skip_string(chars);
        }
        _ => {
            while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
            chars.next_if(|c| ('0'..='~').contains(c));
        }
    }
}

/// Skips a CSI's parameter and intermediate bytes and its final byte.
fn skip_csi(chars: &mut Chars) {
    while chars.next_if(|c| (' '..='?').contains(c)).is_some() {}
    chars.next_if(|c| ('@'..='~').contains(c));
}

/// Skips a control string up to its terminator (BEL, `ESC \` or ST), or to the end of the line.
fn skip_string(chars: &mut Chars) {
    while let Some(c) = chars.next_if(|c| *c != '\n') {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                chars.next_if_eq(&'\\');
                return;
            }
            _ => {}
        }
    }
}

/// When a waiting request is expected to start, short for a table's column, from `eta_ms` (an
/// estimate) or `after_ms` (the estimate stopped first), at `now_ms`: `~4m`, `now`, `>~1d00h`,
/// `-` without either. The CLI's tables say it the same way.
pub fn eta_cell(eta_ms: Option<u64>, after_ms: Option<u64>, now_ms: u64) -> String {
    match (eta_ms, after_ms) {
        (_, Some(after)) => format!(">{}", about(after.saturating_sub(now_ms))),
        (Some(at), None) if at <= now_ms => "now".to_owned(),
        (Some(at), None) => about(at - now_ms),
        (None, None) => "-".to_owned(),
    }
}

/// A rough duration for an estimate, to the minute: `<1m`, `~4m`, `~2h05m`, `~3d04h`.
pub fn about(ms: u64) -> String {
    let m = ms / 60_000;
    if m == 0 {
        "<1m".to_owned()
    } else if m < 60 {
        format!("~{m}m")
    } else if m < 24 * 60 {
        format!("~{}h{:02}m", m / 60, m % 60)
    } else {
        format!("~{}d{:02}h", m / 1440, (m % 1440) / 60)
    }
}

/// A compact duration: `45s`, `12m`, `3h05m`, `2d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// The word and glyph for a host state: colour never carries it alone.
pub fn host_glyph(state: &str) -> &'static str {
    match state {
        "ready" => "●",
        "draining" => "◐",
        "maintenance" => "○",
        "offline" => "⊘",
        "error" => "✖",
        _ => "?",
    }
}

/// How a VM's request is shown: `r7`, or `warm` for a warm pool's VM (owned by no request).
pub use berth_api::request_label;

/// The glyph for a VM state.
pub fn vm_glyph(state: &str) -> &'static str {
    match state {
        "queued" => "…",
        "placed" | "provisioning" | "booting" => "◔",
        "running" => "▶",
        "held" => "‖",
        "releasing" => "◌",
        "done" => "✓",
        "failed" | "lost" => "✖",
        "cancelled" => "−",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_vm_belongs_to_its_pool_not_a_request_number() {
        assert_eq!(request_label(7), "r7");
        assert_eq!(request_label(berth_api::WARM_POOL_REQUEST), "warm");
    }

    #[test]
    fn classes_come_from_the_label_or_the_name() {
        assert_eq!(host_class("sim-small-12", &[]), "sim-small");
        assert_eq!(host_class("mac-7", &[]), "mac");
        assert_eq!(host_class("mac7", &[]), "mac7");
        assert_eq!(host_class("x-1", &["pool=gpu".into()]), "gpu");
        assert_eq!(host_class("42", &[]), "42");
        assert_eq!(host_class("x-1", &["class=big".into()]), "big");
    }

    fn pulse(at_ms: u64, waiting: u64) -> berth_api::Pulse {
        berth_api::Pulse {
            at_ms,
            waiting_requests: waiting,
            waiting_vms: 0,
            running_vms: 0,
            classes: Vec::new(),
        }
    }

    #[test]
    fn pulses_fall_in_time_bins_by_their_time_not_their_order() {
        // An hour in 6 bins of 10 minutes ending at 60m; a gap from 20m to 40m.
        let m = 60_000;
        let pulses = [
            pulse(0, 9),      // at the window's start: outside it
            pulse(m, 1),      // bin 0
            pulse(5 * m, 4),  // bin 0, the larger
            pulse(10 * m, 2), // the end of bin 0
            pulse(10 * m + 1, 3),
            pulse(45 * m, 7),
            pulse(60 * m, 5), // at the end: the last bin
            pulse(61 * m, 8), // after the end: left out
        ];
        let bins = time_bins(&pulses, 60 * m, 60 * m, 6, |p| Some(p.waiting_requests));
        assert_eq!(bins, [Some(4), Some(3), None, None, Some(7), Some(5)]);
        assert_eq!(time_bins(&pulses, 60 * m, 60 * m, 0, |_| Some(1)), []);
        assert_eq!(
            time_bins(&pulses, 60 * m, 60 * m, 2, |p| (p.waiting_requests > 4)
                .then_some(p.waiting_requests)),
            [None, Some(7)]
        );
    }

    #[test]
    fn sizes_and_durations_read_short() {
        assert_eq!(mib(512), "512M");
        assert_eq!(mib(8192), "8G");
        assert_eq!(mib(1536), "1.5G");
        assert_eq!(duration(45_000), "45s");
        assert_eq!(duration(125_000), "2m05s");
        assert_eq!(duration(3_900_000), "1h05m");
        assert_eq!(duration(90_000_000), "1d01h");
        assert_eq!(bytes(900), "900B");
        assert_eq!(bytes(65_536), "64K");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5M");
        assert_eq!(bytes(16 * 1024 * 1024), "16M");
    }

    #[test]
    fn serial_output_loses_escapes_and_controls_but_keeps_its_text() {
        let raw = concat!(
            "\u{1b}[2J\u{1b}[H\u{1b}[0;32m  OK  \u{1b}[0m Started ssh\r\n",
            "\u{1b}]0;owned title\u{7}\u{1b}]52;c;Y3VybCBldmlsIHwgc2g=\u{1b}\\clip\n",
            "\u{1b}P1$qm\u{1b}\\dcs \u{9b}31mc1\u{9b}0m \u{9d}8;;http://x\u{9c}link\n",
            "\u{1b}(B\u{1b}7\u{1b}csaved\u{1b}8\u{0}\u{7}\u{7f}\u{85}\n",
            "progress  10%\rprogress 100%\n",
            "abc\u{8}\u{8}XY\n",
            "a\tb\ttab\n",
            "unterminated \u{1b}]0;title\n",
            "next line\n",
        );
        assert_eq!(
            clean_serial(raw),
            concat!(
                "  OK   Started ssh\n",
                "clip\n",
                "dcs c1 link\n",
                "saved\n",
                "progress 100%\n",
                "aXY\n",
                "a       b       tab\n",
                "unterminated \n",
                "next line\n",
            )
        );
        assert!(
            !clean_serial(raw)
                .chars()
                .any(|c| c.is_control() && c != '\n')
        );
        assert_eq!(clean_serial("plain ✓ text\n"), "plain ✓ text\n");
    }
}
