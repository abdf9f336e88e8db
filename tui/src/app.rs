//! The console's state and its update function: `App::update(Event) -> Vec<Command>`. Pure: no
//! terminal, no network, no clock reads (time arrives as `Event::Tick`), so key scripts test it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::event::{Command, ConnState, Event, Role};
use crate::keymap::{self, KeyAction, Screen};
use crate::model::{
    Action, ConsoleInfo, Detail, DrainPrediction, EventRow, Snapshot, Target, duration, mib,
    vm_name,
};
use crate::vnc::SshEnv;

/// Events kept for the events screen.
pub const EVENTS_MAX: usize = 10_000;
/// After this long without fresh data the header says "stale".
pub const STALE_AFTER_MS: u64 = 5_000;
/// Rows the frame takes that are not table rows (header, tabs, footer, borders, column titles).
const CHROME_ROWS: u16 = 6;
/// How much `E` extends a breakpoint by default.
const EXTEND_DEFAULT_S: u64 = 3600;
/// Rows the frame takes around the serial log's lines: the popup's margin and its borders.
const SERIAL_CHROME_ROWS: u16 = 6;
/// How often a followed log is fetched again.
pub const LOG_FOLLOW_MS: u64 = 2000;
/// The keys a VM offers, where a VM's console is shown. Short enough for the breakpoints
/// table's last column at 80 columns.
pub const VM_KEY_HINTS: &str = "v: vnc  s: screen  l: log";

/// How the console was started.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// No actions at all: the Shift-letter keys do not exist.
    pub read_only: bool,
    /// Set when the console runs inside an SSH session.
    pub ssh: Option<SshEnv>,
    /// What the header names as the source (`http://127.0.0.1:7878`, `demo`).
    pub source_label: String,
    /// False when `NO_COLOR` is set.
    pub color: bool,
}

/// A sortable value of one cell.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortKey {
    Num(i64),
    Text(String),
}

/// A table screen's position, filter, sort and marks.
#[derive(Clone, Debug, Default)]
pub struct TableState {
    /// Position in `view`.
    pub selected: usize,
    /// First visible position in `view`.
    pub offset: usize,
    pub filter: String,
    pub sort_col: usize,
    pub sort_reverse: bool,
    /// Row keys (host names, request and VM ids), kept across refreshes.
    pub marks: BTreeSet<String>,
    /// Indices into the snapshot's rows, filtered and sorted.
    pub view: Vec<usize>,
}

/// What a drain forecast looks like in the dialog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forecast {
    NotAsked,
    Pending,
    Ready(DrainPrediction),
    Unavailable(String),
}

/// A confirmation dialog for an action that changes things.
#[derive(Clone, Debug)]
pub struct Confirm {
    pub kind: KeyAction,
    pub title: String,
    /// Row keys of the targets.
    pub targets: Vec<String>,
    /// The targets as the dialog names them (`sim-small-1`, `r7`, `berth-vm12`).
    pub labels: Vec<String>,
    pub consequence: String,
    /// The name the operator must type before Enter confirms (take offline).
    pub type_to_confirm: Option<String>,
    pub typed: String,
    pub forecast: Forecast,
    pub extend_s: u64,
    /// What else the operator should know before confirming (breakpoints that pin a drain).
    pub note: Option<String>,
    /// For a drain: the held VMs on its hosts, which `r` releases with the drain.
    pub held: Vec<u64>,
}

/// A window over the screens.
#[derive(Clone, Debug)]
pub enum Popup {
    Help {
        scroll: usize,
    },
    /// Boxed: with its forecast it is many times the size of the other popups.
    Confirm(Box<Confirm>),
    /// The VNC hint inside an SSH session.
    Vnc {
        info: ConsoleInfo,
        ssh_command: String,
        url: String,
    },
    Screenshot {
        vm: u64,
        status: Option<Result<(), String>>,
    },
    /// The end of a log: a VM's serial log, or the daemon's own.
    Log(LogView),
}

/// Which log a log popup shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    /// A VM's serial console.
    Serial(u64),
    /// The daemon's own recent log lines.
    Daemon,
}

impl LogKind {
    fn fetch(self) -> Command {
        match self {
            LogKind::Serial(vm) => Command::FetchSerialLog(vm),
            LogKind::Daemon => Command::FetchDaemonLog,
        }
    }
}

/// A log popup: the lines, where the operator scrolled to, and whether it follows the end.
#[derive(Clone, Debug)]
pub struct LogView {
    pub kind: LogKind,
    /// The log's lines, cleaned for the terminal, or why there is none; `None` before the
    /// first answer.
    pub status: Option<Result<Vec<String>, String>>,
    /// Lines scrolled back from the newest: 0 keeps the end of the log at the bottom.
    pub back: usize,
    /// Fetched again every [`LOG_FOLLOW_MS`], the end kept in view, until the operator
    /// scrolls back or presses `f`.
    pub follow: bool,
    /// A fetch was asked for and not yet answered.
    pub fetching: bool,
    /// The local clock when the last fetch was asked for or answered: the next comes
    /// [`LOG_FOLLOW_MS`] after, so a slow source is not asked faster than it answers.
    pub fetched_at_ms: u64,
}

impl LogView {
    fn new(kind: LogKind, now_ms: u64) -> LogView {
        LogView {
            kind,
            status: None,
            back: 0,
            follow: true,
            fetching: true,
            fetched_at_ms: now_ms,
        }
    }

    /// Takes an answer: a followed log shows its end; a paused one keeps the same lines in
    /// view as the log grows below them.
    fn answer(&mut self, result: Result<String, String>, now_ms: u64) {
        let old_n = match &self.status {
            Some(Ok(lines)) => Some(lines.len()),
            _ => None,
        };
        // Cleaned here too: whatever the source, guest bytes never reach the terminal raw.
        let result = result.map(|text| {
            crate::model::clean_serial(&text)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        match (&result, old_n) {
            (Ok(lines), Some(old_n)) if !self.follow => {
                self.back += lines.len().saturating_sub(old_n);
            }
            _ => self.back = 0,
        }
        self.status = Some(result);
        self.fetching = false;
        self.fetched_at_ms = now_ms;
    }
}

/// A line being typed in the footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Filter,
    Command(String),
}

/// The detail view of a host, request or VM.
#[derive(Clone, Debug)]
pub struct DetailState {
    pub target: Target,
    pub content: Option<Result<Detail, String>>,
    pub scroll: usize,
    /// The related row chosen for Enter (a host's VM, a VM's request); `None`: the first.
    pub link: Option<Target>,
}

impl DetailState {
    fn new(target: Target) -> DetailState {
        DetailState {
            target,
            content: None,
            scroll: 0,
            link: None,
        }
    }
}

/// Whether the events screen follows the newest event or stays on a chosen one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsFollow {
    /// The selection sits on the newest event as events arrive.
    Following,
    /// The selection stays on this event (its sequence number) as events arrive.
    Paused { seq: u64 },
}

/// Figures for the overview, computed once per snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Per host class: (class, hosts, cpu used milli, cpu milli, memory used, memory).
    pub classes: Vec<ClassCapacity>,
    pub hosts_by_state: Vec<(String, u64)>,
    pub vms_by_state: Vec<(String, u64)>,
    pub queue_len: u64,
    pub oldest_wait_ms: Option<u64>,
    pub n_breakpoints: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassCapacity {
    pub class: String,
    pub n_hosts: u64,
    pub cpu_used_milli: u64,
    pub cpu_milli: u64,
    pub memory_used_mib: u64,
    pub memory_mib: u64,
}

/// The whole console state.
#[derive(Clone, Debug)]
pub struct App {
    pub opts: Options,
    pub read_only: bool,
    pub screen: Screen,
    pub snap: Snapshot,
    pub summary: Summary,
    /// The local clock (ms since the Unix epoch), from ticks.
    pub now_ms: u64,
    /// The local clock when the last snapshot arrived.
    pub data_at_ms: Option<u64>,
    pub conn: ConnState,
    pub stream_up: bool,
    pub events: VecDeque<EventRow>,
    /// Events ever pushed: the event at index `i` has the sequence number `pushed - 1 - i`,
    /// which stays its key as newer events push it down.
    pub events_pushed: u64,
    pub events_follow: EventsFollow,
    pub tables: BTreeMap<Screen, TableState>,
    pub popup: Option<Popup>,
    pub input: Option<Input>,
    pub detail: Option<DetailState>,
    /// The detail views a drill-down came through, oldest first: Esc returns along them.
    pub trail: Vec<DetailState>,
    /// A one-line message in the footer.
    pub flash: Option<String>,
    pub width: u16,
    pub height: u16,
    /// Set when something visible changed; the runtime draws and clears it.
    pub dirty: bool,
    /// Actions sent and not yet answered.
    pending_actions: usize,
    /// Lower-case row text per screen, built at the first filter keystroke after new data so
    /// typing a filter over 100,000 rows does not format every row again.
    search_cache: BTreeMap<Screen, Vec<String>>,
    /// How the queue screen groups its rows (`c` turns to the next).
    pub queue_grouping: Grouping,
}

impl App {
    pub fn new(opts: Options, now_ms: u64, width: u16, height: u16) -> App {
        let mut tables = BTreeMap::new();
        for s in Screen::ALL {
            if s != Screen::Overview {
                tables.insert(s, TableState::default());
            }
        }
        App {
            read_only: opts.read_only,
            opts,
            screen: Screen::Overview,
            snap: Snapshot::default(),
            summary: Summary::default(),
            now_ms,
            data_at_ms: None,
            conn: ConnState::Connecting,
            stream_up: false,
            events: VecDeque::new(),
            events_pushed: 0,
            events_follow: EventsFollow::Following,
            tables,
            popup: None,
            input: None,
            detail: None,
            trail: Vec::new(),
            flash: None,
            width,
            height,
            dirty: true,
            pending_actions: 0,
            search_cache: BTreeMap::new(),
            queue_grouping: Grouping::None,
        }
    }

    /// The daemon's clock now, estimated from the last snapshot and the local clock.
    pub fn server_now_ms(&self) -> u64 {
        match self.data_at_ms {
            Some(at) => self.snap.now_ms + self.now_ms.saturating_sub(at),
            None => self.now_ms,
        }
    }

    /// How far the daemon's clock is ahead of this machine's (negative: behind), when they
    /// differ by more than a second; durations count on the daemon's clock.
    pub fn clock_skew_ms(&self) -> Option<i64> {
        let at = self.data_at_ms?;
        let skew = self.snap.now_ms as i64 - at as i64;
        (skew.abs() > 1000).then_some(skew)
    }

    /// How long the data has been stale, if it is.
    pub fn stale_ms(&self) -> Option<u64> {
        let age = self.now_ms.saturating_sub(self.data_at_ms?);
        (age > STALE_AFTER_MS).then_some(age)
    }

    /// The visible table rows: height less the chrome.
    pub fn page_rows(&self) -> usize {
        usize::from(self.height.saturating_sub(CHROME_ROWS).max(1))
    }

    /// The serial log lines the popup shows at once.
    pub fn serial_rows(&self) -> usize {
        usize::from(self.height.saturating_sub(SERIAL_CHROME_ROWS).max(1))
    }

    pub fn table(&self, screen: Screen) -> Option<&TableState> {
        self.tables.get(&screen)
    }

    /// The one update function.
    pub fn update(&mut self, event: Event) -> Vec<Command> {
        self.dirty = true;
        match event {
            Event::Key(k) => self.key(k),
            Event::Resize { width, height } => {
                self.width = width;
                self.height = height;
                for s in Screen::ALL {
                    self.scroll_into_view(s);
                }
                vec![]
            }
            Event::Tick { now_ms } => {
                self.now_ms = now_ms;
                self.follow_log()
            }
            Event::Data(snap) => {
                self.set_data(*snap);
                vec![]
            }
            Event::Stream(row) => {
                self.push_event(row);
                // The events screen is the only one that changes at once.
                self.dirty = self.screen == Screen::Events || self.detail.is_some();
                vec![]
            }
            Event::Connection(c) => {
                self.conn = c;
                vec![]
            }
            Event::StreamUp(up) => {
                self.stream_up = up;
                vec![]
            }
            Event::Role(r) => {
                if r == Role::ReadOnly && !self.read_only {
                    self.read_only = true;
                    self.flash = Some("this token is read-only: actions are off".into());
                    if matches!(self.popup, Some(Popup::Confirm(_))) {
                        self.popup = None;
                    }
                }
                vec![]
            }
            Event::Detail(d) => {
                if let Some(det) = &mut self.detail {
                    let same = match &*d {
                        Ok(x) => x.target == det.target,
                        Err(_) => det.content.is_none(),
                    };
                    if same {
                        det.content = Some(*d);
                    }
                }
                vec![]
            }
            Event::Prediction { hosts, result } => {
                if let Some(Popup::Confirm(c)) = &mut self.popup
                    && c.kind == KeyAction::Drain
                    && c.targets == hosts
                {
                    c.forecast = match result {
                        Ok(Some(p)) => Forecast::Ready(p),
                        Ok(None) => {
                            Forecast::Unavailable("the daemon cannot forecast drains yet".into())
                        }
                        Err(e) => Forecast::Unavailable(e),
                    };
                }
                vec![]
            }
            Event::ActionDone { action, result } => {
                self.pending_actions = self.pending_actions.saturating_sub(1);
                let text = match &result {
                    Ok(()) => format!("{}: done", action.describe()),
                    Err(e) => format!("{}: failed: {e}", action.describe()),
                };
                self.flash = Some(text.clone());
                // A token the daemon calls read-only: stop offering what it will refuse.
                if let Err(e) = &result
                    && e.contains(": 403: ")
                    && !self.read_only
                {
                    self.read_only = true;
                    self.flash = Some(format!("{text} · this token is read-only: actions are off"));
                }
                let at_ms = self.server_now_ms();
                self.push_event(EventRow {
                    at_ms,
                    kind: "action".into(),
                    subject: action_subject(&action),
                    text,
                });
                if self.pending_actions == 0 {
                    vec![Command::Refresh]
                } else {
                    vec![]
                }
            }
            Event::Console(result) => self.console_answer(result),
            Event::Notice(text) => {
                self.flash = Some(text);
                vec![]
            }
            Event::Screenshot { vm, result } => {
                if let Some(Popup::Screenshot { vm: v, status }) = &mut self.popup
                    && *v == vm
                {
                    *status = Some(result);
                }
                vec![]
            }
            Event::SerialLog { vm, result } => {
                self.log_answer(LogKind::Serial(vm), result);
                vec![]
            }
            Event::DaemonLog(result) => {
                self.log_answer(LogKind::Daemon, result);
                vec![]
            }
        }
    }

    fn log_answer(&mut self, kind: LogKind, result: Result<String, String>) {
        match &mut self.popup {
            Some(Popup::Log(view)) if view.kind == kind => view.answer(result, self.now_ms),
            // An answer for a popup since closed changes nothing on screen.
            _ => self.dirty = false,
        }
    }

    /// Asks for a followed log again once [`LOG_FOLLOW_MS`] have passed since the last ask.
    fn follow_log(&mut self) -> Vec<Command> {
        let now = self.now_ms;
        match &mut self.popup {
            Some(Popup::Log(view))
                if view.follow
                    && !view.fetching
                    && now.saturating_sub(view.fetched_at_ms) >= LOG_FOLLOW_MS =>
            {
                view.fetching = true;
                view.fetched_at_ms = now;
                vec![view.kind.fetch()]
            }
            _ => vec![],
        }
    }

    fn set_data(&mut self, snap: Snapshot) {
        // Keep each table's selection on the same row across the refresh.
        let keep: Vec<(Screen, Option<String>)> = self
            .tables
            .keys()
            .map(|&s| (s, self.selected_key(s)))
            .collect();
        self.snap = snap;
        self.search_cache.clear();
        self.data_at_ms = Some(self.now_ms);
        self.summary = summarize(&self.snap);
        for (s, key) in keep {
            self.rebuild_view(s);
            if let Some(key) = key
                && let Some(pos) = self.position_of(s, &key)
                && let Some(t) = self.tables.get_mut(&s)
            {
                t.selected = pos;
            }
            self.scroll_into_view(s);
        }
    }

    fn push_event(&mut self, row: EventRow) {
        self.events.push_front(row);
        self.events_pushed += 1;
        while self.events.len() > EVENTS_MAX {
            self.events.pop_back();
        }
        self.search_cache.remove(&Screen::Events);
        // Off the events screen its view is rebuilt when the operator goes there.
        if self.screen == Screen::Events {
            self.rebuild_view(Screen::Events);
        }
    }

    /// The sequence number of the event at `idx` in `events`.
    pub fn event_seq(&self, idx: usize) -> u64 {
        self.events_pushed.saturating_sub(idx as u64 + 1)
    }

    /// The index in `events` of the event numbered `seq`, while it is kept: also how many
    /// newer events there are.
    pub fn event_index(&self, seq: u64) -> Option<usize> {
        let idx = usize::try_from(self.events_pushed.checked_sub(seq + 1)?).ok()?;
        (idx < self.events.len()).then_some(idx)
    }

    /// Where the events selection belongs after the view changed: on the newest event when
    /// following, else on the chosen event, with the rows on screen kept still.
    fn place_events_selection(&mut self) {
        let Some(t) = self.tables.get(&Screen::Events) else {
            return;
        };
        let pos = match self.events_follow {
            // The newest event has the smallest index, wherever the sort puts it.
            EventsFollow::Following => t
                .view
                .iter()
                .enumerate()
                .min_by_key(|(_, i)| **i)
                .map(|(pos, _)| pos),
            EventsFollow::Paused { seq } => self
                .event_index(seq)
                .and_then(|idx| t.view.iter().position(|&i| i == idx)),
        };
        if let (Some(pos), Some(t)) = (pos, self.tables.get_mut(&Screen::Events)) {
            if self.events_follow != EventsFollow::Following {
                // Rows arrived above the chosen one: scroll with it, so it stays put.
                let shift = pos as i64 - t.selected as i64;
                t.offset = usize::try_from(t.offset as i64 + shift).unwrap_or(0);
            }
            t.selected = pos;
        }
    }

    /// The events screen stops following and stays on the selected event.
    fn pause_events(&mut self) {
        if let Some(idx) = self.selected_index(Screen::Events) {
            let seq = self.event_seq(idx);
            self.events_follow = EventsFollow::Paused { seq };
        }
    }

    // ---- keys ----

    fn key(&mut self, k: KeyEvent) -> Vec<Command> {
        if k.kind == crossterm::event::KeyEventKind::Release {
            self.dirty = false;
            return vec![];
        }
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return vec![Command::Quit];
        }
        if self.popup.is_some() {
            return self.popup_key(k);
        }
        if self.input.is_some() {
            return self.input_key(k);
        }
        // A VM's detail view takes the VM keys whichever screen it was opened from.
        let screen = match &self.detail {
            Some(DetailState {
                target: Target::Vm(_),
                ..
            }) => Screen::Vms,
            _ => self.screen,
        };
        let Some(action) = keymap::lookup(&k, screen, self.read_only) else {
            self.dirty = false;
            return vec![];
        };
        self.flash = None;
        self.act(action)
    }

    fn act(&mut self, action: KeyAction) -> Vec<Command> {
        use KeyAction as A;
        if self.detail.is_some() {
            match action {
                A::Up => return self.move_link(-1),
                A::Down => return self.move_link(1),
                A::Top => return self.move_link(i64::MIN / 2),
                A::Bottom => return self.move_link(i64::MAX / 2),
                A::PageUp | A::PageDown => {
                    let page = self.page_rows() / 2;
                    if let Some(d) = &mut self.detail {
                        d.scroll = if action == A::PageUp {
                            d.scroll.saturating_sub(page)
                        } else {
                            d.scroll + page
                        };
                    }
                    return vec![];
                }
                A::Enter => return self.open_link(),
                A::Back => return self.detail_back(),
                A::Vnc | A::Screenshot | A::SerialLog => {
                    if let Some(DetailState {
                        target: Target::Vm(vm),
                        ..
                    }) = &self.detail
                    {
                        let vm = *vm;
                        return self.vm_key(action, vm);
                    }
                    return vec![];
                }
                A::Go(_) | A::Quit | A::Help | A::CommandBar | A::Refresh | A::DaemonLog => {}
                _ => return vec![],
            }
        }
        match action {
            A::Help => {
                self.popup = Some(Popup::Help { scroll: 0 });
                vec![]
            }
            A::CommandBar => {
                self.input = Some(Input::Command(String::new()));
                vec![]
            }
            A::Filter => {
                if self.tables.contains_key(&self.screen) {
                    self.input = Some(Input::Filter);
                }
                vec![]
            }
            A::Up => self.move_by(-1),
            A::Down => self.move_by(1),
            A::PageUp => self.move_by(-(self.page_rows() as i64)),
            A::PageDown => self.move_by(self.page_rows() as i64),
            A::Top => self.move_by(i64::MIN / 2),
            A::Bottom => self.move_by(i64::MAX / 2),
            A::Follow => {
                if self.events_follow == EventsFollow::Following {
                    self.pause_events();
                    self.flash = Some("events paused on this row: f follows again".into());
                } else {
                    self.events_follow = EventsFollow::Following;
                    self.place_events_selection();
                    self.scroll_into_view(Screen::Events);
                    self.flash = Some("following the newest event".into());
                }
                vec![]
            }
            A::DaemonLog => {
                if self.read_only {
                    return vec![];
                }
                self.popup = Some(Popup::Log(LogView::new(LogKind::Daemon, self.now_ms)));
                vec![Command::FetchDaemonLog]
            }
            A::Enter => self.open_detail(),
            A::Back => {
                let screen = self.screen;
                if let Some(t) = self.tables.get_mut(&screen) {
                    if !t.filter.is_empty() {
                        t.filter.clear();
                        self.rebuild_view(screen);
                    } else {
                        t.marks.clear();
                    }
                }
                vec![]
            }
            A::Mark => {
                let screen = self.screen;
                if screen == Screen::Events {
                    return vec![];
                }
                if let Some(key) = self.selected_key(screen)
                    && let Some(t) = self.tables.get_mut(&screen)
                    && !t.marks.remove(&key)
                {
                    t.marks.insert(key);
                }
                self.move_by(1)
            }
            A::SortNext | A::SortPrev | A::SortReverse => {
                let screen = self.screen;
                let n = columns(screen).len();
                if let Some(t) = self.tables.get_mut(&screen) {
                    match action {
                        A::SortNext => t.sort_col = (t.sort_col + 1) % n,
                        A::SortPrev => t.sort_col = (t.sort_col + n - 1) % n,
                        _ => t.sort_reverse = !t.sort_reverse,
                    }
                }
                self.rebuild_view(screen);
                self.flash = Some(self.sort_label(screen));
                vec![]
            }
            A::Group => {
                self.queue_grouping = self.queue_grouping.next();
                self.search_cache.remove(&Screen::Queue);
                self.rebuild_view(Screen::Queue);
                self.flash = Some(match self.queue_grouping {
                    Grouping::None => "queue not grouped".to_owned(),
                    g => format!(
                        "queue grouped by {} (its first request's place in the order first)",
                        g.noun()
                    ),
                });
                vec![]
            }
            A::Refresh => vec![Command::Refresh],
            A::Go(s) => {
                self.detail = None;
                self.trail.clear();
                self.screen = s;
                self.rebuild_view(s);
                vec![]
            }
            A::Quit => vec![Command::Quit],
            A::Vnc | A::Screenshot | A::SerialLog => match self.selected_vm() {
                Some(vm) => self.vm_key(action, vm),
                None => vec![],
            },
            A::Drain | A::Resume | A::Offline | A::Cancel | A::Release | A::Extend => {
                self.open_confirm(action)
            }
        }
    }

    fn vm_key(&mut self, action: KeyAction, vm: u64) -> Vec<Command> {
        match action {
            KeyAction::Vnc => {
                self.flash = Some(format!("asking for the console of {}", vm_name(vm)));
                vec![Command::FetchConsole(vm)]
            }
            KeyAction::SerialLog => {
                self.popup = Some(Popup::Log(LogView::new(LogKind::Serial(vm), self.now_ms)));
                vec![Command::FetchSerialLog(vm)]
            }
            _ => {
                self.popup = Some(Popup::Screenshot { vm, status: None });
                vec![Command::FetchScreenshot(vm)]
            }
        }
    }

    fn console_answer(&mut self, result: Result<ConsoleInfo, String>) -> Vec<Command> {
        match result {
            Err(e) => {
                self.flash = Some(format!("no console: {e}"));
                vec![]
            }
            Ok(info) => match &self.opts.ssh {
                Some(ssh) => {
                    let (ssh_command, url) = crate::vnc::ssh_hint(ssh, &info);
                    let copy = format!("{ssh_command}\n{url}");
                    self.popup = Some(Popup::Vnc {
                        info,
                        ssh_command,
                        url,
                    });
                    vec![Command::Copy(copy)]
                }
                None => {
                    self.flash = Some(format!("opening a viewer on {}", info.vnc_url()));
                    vec![Command::LaunchViewer {
                        host: info.host,
                        port: info.port,
                    }]
                }
            },
        }
    }

    fn popup_key(&mut self, k: KeyEvent) -> Vec<Command> {
        let page = self.serial_rows();
        let Some(popup) = &mut self.popup else {
            return vec![];
        };
        match popup {
            Popup::Help { scroll } => {
                match k.code {
                    KeyCode::Char('j') | KeyCode::Down => *scroll += 1,
                    KeyCode::Char('k') | KeyCode::Up => *scroll = scroll.saturating_sub(1),
                    KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter => {
                        self.popup = None
                    }
                    _ => {}
                }
                vec![]
            }
            Popup::Vnc { .. } | Popup::Screenshot { .. } => {
                if matches!(
                    k.code,
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Char('s')
                ) {
                    self.popup = None;
                }
                vec![]
            }
            Popup::Log(view) => {
                let n = match &view.status {
                    Some(Ok(lines)) => lines.len(),
                    _ => 0,
                };
                // Scrolled all the way back, the first line is at the top of the popup.
                let back_max = n.saturating_sub(page);
                let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
                // Scrolling back stops following, as `less +F` does; `f` follows again.
                let back_by = |view: &mut LogView, lines: usize| {
                    view.back = (view.back + lines).min(back_max);
                    view.follow = false;
                };
                match k.code {
                    KeyCode::Char('k') | KeyCode::Up => back_by(view, 1),
                    KeyCode::Char('j') | KeyCode::Down => view.back = view.back.saturating_sub(1),
                    KeyCode::PageUp => back_by(view, page),
                    KeyCode::Char('b') if ctrl => back_by(view, page),
                    KeyCode::PageDown => view.back = view.back.saturating_sub(page),
                    KeyCode::Char('f') if ctrl => view.back = view.back.saturating_sub(page),
                    KeyCode::Char('g') | KeyCode::Home => back_by(view, back_max),
                    KeyCode::Char('G') | KeyCode::End => view.back = 0,
                    KeyCode::Char('f') => {
                        view.follow = !view.follow;
                        if view.follow {
                            view.back = 0;
                            if !view.fetching {
                                view.fetching = true;
                                view.fetched_at_ms = self.now_ms;
                                return vec![view.kind.fetch()];
                            }
                        }
                    }
                    KeyCode::Char('r') => {
                        view.status = None;
                        view.back = 0;
                        view.fetching = true;
                        view.fetched_at_ms = self.now_ms;
                        return vec![view.kind.fetch()];
                    }
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Char('l') => {
                        self.popup = None
                    }
                    _ => self.dirty = false,
                }
                vec![]
            }
            Popup::Confirm(c) => {
                if k.code == KeyCode::Esc {
                    self.popup = None;
                    self.flash = Some("cancelled: nothing changed".into());
                    return vec![];
                }
                if let Some(name) = &c.type_to_confirm {
                    match k.code {
                        KeyCode::Char(ch) => c.typed.push(ch),
                        KeyCode::Backspace => {
                            c.typed.pop();
                        }
                        KeyCode::Enter if c.typed == *name => return self.confirmed(),
                        _ => {}
                    }
                    return vec![];
                }
                match k.code {
                    KeyCode::Char('y') | KeyCode::Enter => self.confirmed(),
                    KeyCode::Char('r') if c.kind == KeyAction::Drain && !c.held.is_empty() => {
                        let held = c.held.clone();
                        let mut cmds = self.confirmed();
                        self.pending_actions += held.len();
                        cmds.extend(
                            held.into_iter()
                                .map(|vm| Command::Perform(Action::Release(vm))),
                        );
                        cmds
                    }
                    KeyCode::Char('n') | KeyCode::Char('q') => {
                        self.popup = None;
                        self.flash = Some("cancelled: nothing changed".into());
                        vec![]
                    }
                    KeyCode::Char('+') if c.kind == KeyAction::Extend => {
                        c.extend_s += EXTEND_DEFAULT_S;
                        c.consequence = extend_consequence(c.extend_s);
                        vec![]
                    }
                    KeyCode::Char('-') if c.kind == KeyAction::Extend => {
                        c.extend_s = c
                            .extend_s
                            .saturating_sub(EXTEND_DEFAULT_S)
                            .max(EXTEND_DEFAULT_S);
                        c.consequence = extend_consequence(c.extend_s);
                        vec![]
                    }
                    _ => {
                        self.dirty = false;
                        vec![]
                    }
                }
            }
        }
    }

    fn confirmed(&mut self) -> Vec<Command> {
        let Some(Popup::Confirm(c)) = self.popup.take() else {
            return vec![];
        };
        let actions: Vec<Action> = c
            .targets
            .iter()
            .filter_map(|t| match c.kind {
                KeyAction::Drain => Some(Action::Drain(t.clone())),
                KeyAction::Resume => Some(Action::Resume(t.clone())),
                KeyAction::Offline => Some(Action::Offline(t.clone())),
                KeyAction::Cancel => parse_request_key(t).map(Action::Cancel),
                KeyAction::Release => parse_vm_key(t).map(Action::Release),
                KeyAction::Extend => parse_vm_key(t).map(|vm| Action::Extend {
                    vm,
                    seconds: c.extend_s,
                }),
                _ => None,
            })
            .collect();
        if let Some(t) = self.tables.get_mut(&self.screen) {
            t.marks.clear();
        }
        self.pending_actions += actions.len();
        self.flash = Some(format!("{}: sent", c.title));
        actions.into_iter().map(Command::Perform).collect()
    }

    /// A `:` command: `drain` acts where it applies (the hosts screen), on the selected or
    /// marked rows; `drain sim-large-3` goes there and acts on that row alone. A screen's
    /// command with a name opens that row's details (`:vm berth-vm33`, `:host sim-mac-1`,
    /// `:request r7`). A command given on a screen it does not act on is refused, naming
    /// where it does; a name of the wrong kind is refused, naming its kind.
    fn run_command(&mut self, text: &str) -> Vec<Command> {
        let t = text.trim();
        let (word, arg) = match t.split_once(char::is_whitespace) {
            Some((w, a)) => (w, Some(a.trim()).filter(|a| !a.is_empty())),
            None => (t, None),
        };
        let Some(b) = keymap::command_binding(word, self.read_only) else {
            self.flash = Some(format!("no command `{word}`: press ? for the list"));
            return vec![];
        };
        // Named as the operator typed it when that is a name or alias (`:vm`), else in full.
        let name = if b.named(word) {
            word
        } else {
            b.command.unwrap_or(word)
        };
        let home = match b.action {
            KeyAction::Go(s) => Some(s),
            _ => match b.scope {
                keymap::Scope::On(screens) => screens.first().copied(),
                keymap::Scope::Everywhere => None,
            },
        };
        let Some(arg) = arg else {
            if !b.scope.contains(self.screen) {
                let where_ = home.map_or("another screen", |s| s.title());
                self.flash = Some(format!(
                    "`:{name}` acts on {where_}: go there, or name one (:{name} NAME)"
                ));
                return vec![];
            }
            return self.act(b.action);
        };
        let Some((screen, kind)) = home.and_then(|s| Some((s, TargetKind::of_screen(s)?))) else {
            self.flash = Some(format!("`:{name}` takes no target"));
            return vec![];
        };
        let target = match self.resolve(kind, arg) {
            Ok(t) => t,
            Err(why) => {
                self.flash = Some(format!("`:{name}` takes {}: {why}", kind.noun()));
                return vec![];
            }
        };
        let key = match &target {
            Target::Host(h) => h.clone(),
            Target::Request(r) => r.to_string(),
            Target::Vm(v) => v.to_string(),
        };
        self.act(KeyAction::Go(screen));
        let pos = self.position_of(screen, &key);
        if let (Some(pos), Some(t)) = (pos, self.tables.get_mut(&screen)) {
            t.selected = pos;
            t.marks.clear();
            self.scroll_into_view(screen);
        }
        if let KeyAction::Go(_) = b.action {
            // The row need not be on the screen: an ended VM or a placed request still has
            // details.
            self.detail = Some(DetailState::new(target.clone()));
            return vec![Command::FetchDetail(target)];
        }
        if pos.is_none() {
            self.flash = Some(format!("`:{name}`: no `{arg}` on {}", screen.title()));
            return vec![];
        }
        self.act(b.action)
    }

    /// What a name given to a command is, for a command that takes a `kind`: the target, or
    /// why it is not one (a host where a VM was asked for, a name that is nowhere).
    fn resolve(&self, kind: TargetKind, arg: &str) -> Result<Target, String> {
        let is_host = self.snap.hosts.iter().any(|h| h.name == arg);
        // Names with their prefix say what they are; a bare number is whatever was asked.
        let vm_named = arg
            .strip_prefix("berth-vm")
            .or_else(|| arg.strip_prefix("vm"))
            .and_then(|d| d.parse::<u64>().ok());
        let request_named = arg.strip_prefix('r').and_then(|d| d.parse::<u64>().ok());
        let number = arg.parse::<u64>().ok();
        let is_a = |what: &str, cmd: &str| format!("`{arg}` is {what} (:{cmd} {arg})");
        match kind {
            TargetKind::Host if is_host => Ok(Target::Host(arg.to_owned())),
            TargetKind::Vm | TargetKind::Request if is_host => Err(is_a("a host", "host")),
            TargetKind::Host | TargetKind::Request if vm_named.is_some() => Err(is_a("a VM", "vm")),
            TargetKind::Host | TargetKind::Vm if request_named.is_some() => {
                Err(is_a("a request", "request"))
            }
            TargetKind::Host => Err(format!("no host `{arg}`")),
            TargetKind::Vm => vm_named
                .or(number)
                .map(Target::Vm)
                .ok_or_else(|| format!("`{arg}` is not a VM name")),
            TargetKind::Request => request_named
                .or(number)
                .map(Target::Request)
                .ok_or_else(|| format!("`{arg}` is not a request id")),
        }
    }

    /// The names the command bar offers for what follows `word` (hosts for `:drain`, VMs for
    /// `:vm`), or the command names `text` begins, when it has no space yet.
    pub fn command_candidates(&self, text: &str) -> Vec<String> {
        let Some((word, partial)) = text.trim_start().split_once(char::is_whitespace) else {
            return keymap::complete(text.trim(), self.read_only)
                .into_iter()
                .map(str::to_owned)
                .collect();
        };
        let partial = partial.trim_start();
        let Some(b) = keymap::command_binding(word, self.read_only) else {
            return vec![];
        };
        let home = match b.action {
            KeyAction::Go(s) => Some(s),
            _ => match b.scope {
                keymap::Scope::On(screens) => screens.first().copied(),
                keymap::Scope::Everywhere => None,
            },
        };
        let Some(kind) = home.and_then(TargetKind::of_screen) else {
            return vec![];
        };
        let names: BTreeSet<String> = match kind {
            TargetKind::Host => self.snap.hosts.iter().map(|h| h.name.clone()).collect(),
            TargetKind::Vm => self
                .snap
                .vms
                .iter()
                .map(|v| v.id)
                .chain(self.snap.breakpoints.iter().map(|b| b.vm))
                .map(vm_name)
                .collect(),
            TargetKind::Request => self
                .snap
                .queue
                .iter()
                .map(|r| r.id)
                .chain(self.snap.vms.iter().map(|v| v.request))
                .map(|r| format!("r{r}"))
                .collect(),
        };
        let mut names: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(partial))
            .collect();
        // Numbers in their natural order: r9 before r10.
        names.sort_by(|a, b| natural_key(a).cmp(&natural_key(b)));
        names
    }

    /// Tab in the command bar: the whole name when one fits, else as far as all that fit
    /// agree.
    fn complete_command(&self, text: &str) -> String {
        let candidates = self.command_candidates(text);
        let Some(first) = candidates.first() else {
            return text.to_owned();
        };
        let common = candidates.iter().fold(first.as_str(), |acc, c| {
            let n = acc
                .char_indices()
                .zip(c.chars())
                .take_while(|((_, a), b)| a == b)
                .count();
            let end = acc.char_indices().nth(n).map_or(acc.len(), |(i, _)| i);
            &acc[..end]
        });
        match text.trim_start().split_once(char::is_whitespace) {
            Some((word, _)) => format!("{word} {common}"),
            None => common.to_owned(),
        }
    }

    fn open_confirm(&mut self, kind: KeyAction) -> Vec<Command> {
        if self.read_only {
            return vec![];
        }
        let screen = self.screen;
        // The marked rows, else the selected one.
        let mut targets: Vec<String> = match self.tables.get(&screen) {
            Some(t) if !t.marks.is_empty() => t.marks.iter().cloned().collect(),
            _ => self.selected_key(screen).into_iter().collect(),
        };
        if screen == Screen::Vms && matches!(kind, KeyAction::Release | KeyAction::Extend) {
            // On the VMs screen only held VMs have a breakpoint to release or extend.
            let held: BTreeSet<String> = self
                .snap
                .vms
                .iter()
                .filter(|v| v.state == "held")
                .map(|v| v.id.to_string())
                .collect();
            targets.retain(|t| held.contains(t));
        }
        if kind == KeyAction::Offline && targets.len() > 1 {
            // Taking hosts offline stops their VMs: one at a time, by name.
            targets = self.selected_key(screen).into_iter().collect();
        }
        if targets.is_empty() {
            self.flash = Some("nothing to act on: select or mark a row".into());
            return vec![];
        }
        let n = targets.len();
        let shown = |prefix: &str| -> Vec<String> {
            targets.iter().map(|t| format!("{prefix}{t}")).collect()
        };
        let (title, consequence, labels) = match kind {
            KeyAction::Drain => (
                format!("drain {}", plural(n, "host")),
                "no new VMs are placed there; running VMs finish, then the host is idle".to_owned(),
                targets.clone(),
            ),
            KeyAction::Resume => (
                format!("resume {}", plural(n, "host")),
                "the hosts take new VMs again".to_owned(),
                targets.clone(),
            ),
            KeyAction::Offline => (
                "take 1 host offline".to_owned(),
                "the host stops at once: its VMs are lost and their requests retried elsewhere"
                    .to_owned(),
                targets.clone(),
            ),
            KeyAction::Cancel => (
                format!("cancel {}", plural(n, "request")),
                "waiting VMs are dropped and running ones destroyed; requesters see `cancelled`"
                    .to_owned(),
                shown("r"),
            ),
            KeyAction::Release => (
                format!("release {}", plural(n, "breakpoint")),
                "the held VMs are destroyed; anyone attached loses the session".to_owned(),
                targets
                    .iter()
                    .map(|t| parse_vm_key(t).map_or(t.clone(), vm_name))
                    .collect(),
            ),
            KeyAction::Extend => (
                format!("extend {}", plural(n, "breakpoint")),
                extend_consequence(EXTEND_DEFAULT_S),
                targets
                    .iter()
                    .map(|t| parse_vm_key(t).map_or(t.clone(), vm_name))
                    .collect(),
            ),
            _ => return vec![],
        };
        let forecast = if kind == KeyAction::Drain {
            Forecast::Pending
        } else {
            Forecast::NotAsked
        };
        let note = match kind {
            KeyAction::Drain => self.holds_pinning(&targets),
            KeyAction::Extend => self.draining_hosts_of(&targets),
            _ => None,
        };
        let held = if kind == KeyAction::Drain {
            self.held_on(&targets)
        } else {
            vec![]
        };
        let type_to_confirm = (kind == KeyAction::Offline).then(|| targets[0].clone());
        let cmds = if kind == KeyAction::Drain {
            vec![Command::PredictDrain(targets.clone())]
        } else {
            vec![]
        };
        self.popup = Some(Popup::Confirm(Box::new(Confirm {
            kind,
            title,
            targets,
            labels,
            consequence,
            type_to_confirm,
            typed: String::new(),
            forecast,
            extend_s: EXTEND_DEFAULT_S,
            note,
            held,
        })));
        cmds
    }

    /// The held VMs on these hosts.
    fn held_on(&self, hosts: &[String]) -> Vec<u64> {
        self.snap
            .breakpoints
            .iter()
            .filter(|b| b.host.as_ref().is_some_and(|h| hosts.contains(h)))
            .map(|b| b.vm)
            .collect()
    }

    /// The breakpoints on these hosts, which a drain waits for: who holds each and when it
    /// expires on its own.
    fn holds_pinning(&self, hosts: &[String]) -> Option<String> {
        let now = self.server_now_ms();
        let held: Vec<String> = self
            .snap
            .breakpoints
            .iter()
            .filter(|b| b.host.as_ref().is_some_and(|h| hosts.contains(h)))
            .map(|b| {
                let expires = b.expires_ms.map_or_else(
                    || "no expiry known".to_owned(),
                    |t| format!("expires in {}", duration(t.saturating_sub(now))),
                );
                format!(
                    "{} on {} held by {} ({expires})",
                    b.name,
                    b.host.as_deref().unwrap_or("?"),
                    b.owner
                )
            })
            .collect();
        (!held.is_empty()).then(|| {
            let them = if held.len() == 1 { "it" } else { "them" };
            format!(
                "the drain waits for {}: {}; r drains and releases {them} now",
                plural(held.len(), "breakpoint"),
                held.join("; ")
            )
        })
    }

    /// The draining hosts of these held VMs (row keys), which a longer hold keeps busy.
    fn draining_hosts_of(&self, vms: &[String]) -> Option<String> {
        let draining: BTreeSet<&str> = self
            .snap
            .breakpoints
            .iter()
            .filter(|b| vms.iter().any(|t| parse_vm_key(t) == Some(b.vm)))
            .filter_map(|b| b.host.as_deref())
            .filter(|h| {
                self.snap
                    .hosts
                    .iter()
                    .any(|x| x.name == *h && x.state == "draining")
            })
            .collect();
        (!draining.is_empty()).then(|| {
            let verb = if draining.len() == 1 { "is" } else { "are" };
            let hosts: Vec<&str> = draining.into_iter().collect();
            format!(
                "{} {verb} draining: a longer hold keeps the drain from finishing",
                hosts.join(", ")
            )
        })
    }

    fn input_key(&mut self, k: KeyEvent) -> Vec<Command> {
        let screen = self.screen;
        match self.input.clone() {
            Some(Input::Filter) => {
                match k.code {
                    KeyCode::Esc => {
                        self.input = None;
                        if let Some(t) = self.tables.get_mut(&screen) {
                            t.filter.clear();
                        }
                    }
                    KeyCode::Enter => self.input = None,
                    KeyCode::Backspace => {
                        if let Some(t) = self.tables.get_mut(&screen) {
                            t.filter.pop();
                        }
                    }
                    KeyCode::Char(c) => {
                        if let Some(t) = self.tables.get_mut(&screen) {
                            t.filter.push(c);
                        }
                    }
                    _ => return vec![],
                }
                if let Some(t) = self.tables.get_mut(&screen) {
                    t.selected = 0;
                    t.offset = 0;
                }
                self.rebuild_view(screen);
                vec![]
            }
            Some(Input::Command(mut text)) => match k.code {
                KeyCode::Esc => {
                    self.input = None;
                    vec![]
                }
                KeyCode::Enter => {
                    self.input = None;
                    self.run_command(&text)
                }
                KeyCode::Tab => {
                    text = self.complete_command(&text);
                    self.input = Some(Input::Command(text));
                    vec![]
                }
                KeyCode::Backspace => {
                    text.pop();
                    self.input = Some(Input::Command(text));
                    vec![]
                }
                KeyCode::Char(c) => {
                    text.push(c);
                    self.input = Some(Input::Command(text));
                    vec![]
                }
                _ => vec![],
            },
            None => vec![],
        }
    }

    // ---- tables ----

    fn move_by(&mut self, delta: i64) -> Vec<Command> {
        let screen = self.screen;
        if let Some(t) = self.tables.get_mut(&screen) {
            let n = t.view.len() as i64;
            let pos = (t.selected as i64)
                .saturating_add(delta)
                .clamp(0, (n - 1).max(0));
            t.selected = pos as usize;
        }
        self.scroll_into_view(screen);
        if screen == Screen::Events {
            self.pause_events();
        }
        vec![]
    }

    fn scroll_into_view(&mut self, screen: Screen) {
        let page = self.page_rows();
        if let Some(t) = self.tables.get_mut(&screen) {
            t.selected = t.selected.min(t.view.len().saturating_sub(1));
            if t.selected < t.offset {
                t.offset = t.selected;
            } else if t.selected >= t.offset + page {
                t.offset = t.selected + 1 - page;
            }
            t.offset = t.offset.min(t.view.len().saturating_sub(1));
        }
    }

    /// The queue's group of row `idx`: its change (`-` for none) or its account.
    pub fn queue_group(&self, idx: usize) -> String {
        let Some(r) = self.snap.queue.get(idx) else {
            return String::new();
        };
        match self.queue_grouping {
            Grouping::Change => r.change.clone().unwrap_or_else(|| "-".into()),
            Grouping::Account | Grouping::None => r.account.clone(),
        }
    }

    /// `view` with the rows of each group together: the groups in the order their first row
    /// has in `view`, each group's rows in that order too.
    fn grouped(&self, view: Vec<usize>) -> Vec<usize> {
        let mut first: BTreeMap<String, usize> = BTreeMap::new();
        let keyed: Vec<(usize, usize, usize)> = view
            .iter()
            .enumerate()
            .map(|(pos, &idx)| {
                let n = first.len();
                let group = *first.entry(self.queue_group(idx)).or_insert(n);
                (group, pos, idx)
            })
            .collect();
        let mut keyed = keyed;
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, _, idx)| idx).collect()
    }

    fn rebuild_view(&mut self, screen: Screen) {
        let Some(t) = self.tables.get(&screen) else {
            return;
        };
        let n = self.n_rows(screen);
        let filter = t.filter.to_lowercase();
        let (col, reverse) = (t.sort_col, t.sort_reverse);
        let mut view: Vec<usize> = if filter.is_empty() {
            (0..n).collect()
        } else {
            if self.search_cache.get(&screen).is_none_or(|c| c.len() != n) {
                let texts = (0..n)
                    .map(|i| self.cells(screen, i).join("\u{1f}").to_lowercase())
                    .collect();
                self.search_cache.insert(screen, texts);
            }
            match self.search_cache.get(&screen) {
                Some(texts) => (0..n).filter(|&i| texts[i].contains(&filter)).collect(),
                None => (0..n).collect(),
            }
        };
        // Sort 0 is the source's own order (queue order, newest event first). Any other
        // column is a total order: equal values by name or id, always ascending, so rows
        // that tie do not trade places on each refresh.
        if col != 0 {
            let mut keyed: Vec<(SortKey, SortKey, usize)> = view
                .iter()
                .map(|&i| (self.sort_key(screen, i, col), self.tie_key(screen, i), i))
                .collect();
            keyed.sort_by(|a, b| {
                let by_value = if reverse {
                    b.0.cmp(&a.0)
                } else {
                    a.0.cmp(&b.0)
                };
                by_value.then_with(|| a.1.cmp(&b.1))
            });
            view = keyed.into_iter().map(|(_, _, i)| i).collect();
        } else if reverse {
            view.reverse();
        }
        if screen == Screen::Queue && self.queue_grouping != Grouping::None {
            view = self.grouped(view);
        }
        if let Some(t) = self.tables.get_mut(&screen) {
            t.view = view;
        }
        if screen == Screen::Events {
            self.place_events_selection();
        }
        self.scroll_into_view(screen);
    }

    /// What breaks a tie in a sort: the host's name, the request's or VM's id, the event's
    /// age (newest first).
    fn tie_key(&self, screen: Screen, idx: usize) -> SortKey {
        let num = |n: u64| SortKey::Num(i64::try_from(n).unwrap_or(i64::MAX));
        match screen {
            Screen::Hosts => SortKey::Text(
                self.snap
                    .hosts
                    .get(idx)
                    .map(|h| h.name.clone())
                    .unwrap_or_default(),
            ),
            Screen::Queue => num(self.snap.queue.get(idx).map_or(0, |r| r.id)),
            Screen::Vms => num(self.snap.vms.get(idx).map_or(0, |v| v.id)),
            Screen::Breakpoints => num(self.snap.breakpoints.get(idx).map_or(0, |b| b.vm)),
            Screen::Events | Screen::Overview => num(idx as u64),
        }
    }

    fn sort_label(&self, screen: Screen) -> String {
        let Some(t) = self.tables.get(&screen) else {
            return String::new();
        };
        let name = self.titles(screen).get(t.sort_col).copied().unwrap_or("?");
        let dir = if t.sort_reverse {
            "descending"
        } else {
            "ascending"
        };
        if t.sort_col == 0 {
            format!("sorted in source order ({dir})")
        } else {
            format!("sorted by {} ({dir})", name.to_lowercase())
        }
    }

    pub fn n_rows(&self, screen: Screen) -> usize {
        match screen {
            Screen::Overview => 0,
            Screen::Hosts => self.snap.hosts.len(),
            Screen::Queue => self.snap.queue.len(),
            Screen::Vms => self.snap.vms.len(),
            Screen::Breakpoints => self.snap.breakpoints.len(),
            Screen::Events => self.events.len(),
        }
    }

    /// The key that identifies a row across refreshes (and names it in marks).
    pub fn row_key(&self, screen: Screen, idx: usize) -> Option<String> {
        Some(match screen {
            Screen::Overview => return None,
            Screen::Hosts => self.snap.hosts.get(idx)?.name.clone(),
            Screen::Queue => self.snap.queue.get(idx)?.id.to_string(),
            Screen::Vms => self.snap.vms.get(idx)?.id.to_string(),
            Screen::Breakpoints => self.snap.breakpoints.get(idx)?.vm.to_string(),
            Screen::Events => {
                self.events.get(idx)?;
                self.event_seq(idx).to_string()
            }
        })
    }

    pub fn selected_index(&self, screen: Screen) -> Option<usize> {
        let t = self.tables.get(&screen)?;
        t.view.get(t.selected).copied()
    }

    pub fn selected_key(&self, screen: Screen) -> Option<String> {
        self.row_key(screen, self.selected_index(screen)?)
    }

    fn position_of(&self, screen: Screen, key: &str) -> Option<usize> {
        let t = self.tables.get(&screen)?;
        t.view
            .iter()
            .position(|&i| self.row_key(screen, i).as_deref() == Some(key))
    }

    fn selected_vm(&self) -> Option<u64> {
        let idx = self.selected_index(self.screen)?;
        match self.screen {
            Screen::Vms => self.snap.vms.get(idx).map(|v| v.id),
            Screen::Breakpoints => self.snap.breakpoints.get(idx).map(|b| b.vm),
            _ => None,
        }
    }

    fn open_detail(&mut self) -> Vec<Command> {
        let Some(idx) = self.selected_index(self.screen) else {
            return vec![];
        };
        let target = match self.screen {
            Screen::Hosts => self
                .snap
                .hosts
                .get(idx)
                .map(|h| Target::Host(h.name.clone())),
            Screen::Queue => self.snap.queue.get(idx).map(|r| Target::Request(r.id)),
            Screen::Vms => self.snap.vms.get(idx).map(|v| Target::Vm(v.id)),
            Screen::Breakpoints => self.snap.breakpoints.get(idx).map(|b| Target::Vm(b.vm)),
            Screen::Events => {
                let e = self.events.get(idx);
                e.and_then(|e| match e.kind.as_str() {
                    "host" => Some(Target::Host(e.subject.clone())),
                    "request" => parse_request_key(&e.subject).map(Target::Request),
                    "vm" => e
                        .subject
                        .strip_prefix("berth-vm")
                        .and_then(|d| d.parse().ok())
                        .map(Target::Vm),
                    _ => None,
                })
            }
            Screen::Overview => None,
        };
        let Some(target) = target else {
            return vec![];
        };
        self.trail.clear();
        self.detail = Some(DetailState::new(target.clone()));
        vec![Command::FetchDetail(target)]
    }

    // ---- drill-down ----

    /// What a detail view leads to, as k9s' xray: a host to its VMs, a VM to its request and
    /// its host, a request to its VMs. From the snapshot, so it follows each refresh.
    pub fn links(&self, target: &Target) -> Vec<Target> {
        match target {
            Target::Host(h) => {
                let mut vms: Vec<u64> = self
                    .snap
                    .vms
                    .iter()
                    .filter(|v| v.host.as_deref() == Some(h.as_str()))
                    .map(|v| v.id)
                    .collect();
                vms.sort_unstable();
                vms.into_iter().map(Target::Vm).collect()
            }
            Target::Request(r) => {
                let mut vms: Vec<u64> = self
                    .snap
                    .vms
                    .iter()
                    .filter(|v| v.request == *r)
                    .map(|v| v.id)
                    .collect();
                vms.sort_unstable();
                vms.into_iter().map(Target::Vm).collect()
            }
            Target::Vm(id) => {
                let host = |h: Option<&String>| h.cloned().map(Target::Host);
                match self.snap.vms.iter().find(|v| v.id == *id) {
                    Some(v) => std::iter::once(Target::Request(v.request))
                        .chain(host(v.host.as_ref()))
                        .collect(),
                    None => self
                        .snap
                        .breakpoints
                        .iter()
                        .find(|b| b.vm == *id)
                        .and_then(|b| host(b.host.as_ref()))
                        .into_iter()
                        .collect(),
                }
            }
        }
    }

    /// One line about a linked host, request or VM, for the drill-down list.
    pub fn link_text(&self, target: &Target) -> String {
        let now = self.server_now_ms();
        match target {
            Target::Vm(id) => match self.snap.vms.iter().find(|v| v.id == *id) {
                Some(v) => format!(
                    "{}  {} {}  r{}  {}  {}",
                    v.name,
                    crate::model::vm_glyph(&v.state),
                    v.state,
                    v.request,
                    v.template,
                    v.host.as_deref().unwrap_or("-"),
                ),
                None => vm_name(*id),
            },
            Target::Request(r) => match self.snap.queue.iter().find(|q| q.id == *r) {
                Some(q) => format!(
                    "r{r}  {}  {}  waiting {}",
                    q.requester,
                    q.shape(),
                    duration(now.saturating_sub(q.submitted_ms))
                ),
                None => {
                    let n = self.snap.vms.iter().filter(|v| v.request == *r).count();
                    format!("request r{r}  {}", plural(n, "live VM"))
                }
            },
            Target::Host(h) => match self.snap.hosts.iter().find(|x| &x.name == h) {
                Some(x) => format!(
                    "host {h}  {} {}  cpu {}/{}  {}",
                    crate::model::host_glyph(&x.state),
                    x.state,
                    milli(x.cpu_used_milli),
                    milli(x.cpu_milli),
                    plural(usize::try_from(x.n_vms).unwrap_or(usize::MAX), "VM"),
                ),
                None => format!("host {h}"),
            },
        }
    }

    /// The position of the chosen link among `links`.
    pub fn link_position(&self, links: &[Target]) -> usize {
        self.detail
            .as_ref()
            .and_then(|d| d.link.as_ref())
            .and_then(|l| links.iter().position(|x| x == l))
            .unwrap_or(0)
    }

    /// j/k in a detail view: the next or previous link, or the history when there are none.
    fn move_link(&mut self, delta: i64) -> Vec<Command> {
        let Some(d) = &self.detail else {
            return vec![];
        };
        let links = self.links(&d.target);
        let pos = self.link_position(&links) as i64;
        let Some(d) = &mut self.detail else {
            return vec![];
        };
        if links.is_empty() {
            d.scroll = usize::try_from((d.scroll as i64).saturating_add(delta)).unwrap_or(0);
            return vec![];
        }
        let n = links.len() as i64;
        let pos = pos.saturating_add(delta).clamp(0, n - 1);
        d.link = links.into_iter().nth(pos as usize);
        vec![]
    }

    /// Enter in a detail view: opens the chosen link, keeping the way back.
    fn open_link(&mut self) -> Vec<Command> {
        let Some(d) = &self.detail else {
            return vec![];
        };
        let links = self.links(&d.target);
        let Some(next) = links.get(self.link_position(&links)).cloned() else {
            return vec![];
        };
        if let Some(d) = self.detail.take() {
            self.trail.push(d);
        }
        self.detail = Some(DetailState::new(next.clone()));
        vec![Command::FetchDetail(next)]
    }

    /// Esc in a detail view: back to where the drill-down came from, fetched again, or to
    /// the table.
    fn detail_back(&mut self) -> Vec<Command> {
        match self.trail.pop() {
            Some(prev) => {
                let target = prev.target.clone();
                self.detail = Some(prev);
                vec![Command::FetchDetail(target)]
            }
            None => {
                self.detail = None;
                vec![]
            }
        }
    }

    /// The way the drill-down came, as the title says it: `host sim-small-1 › berth-vm101`.
    pub fn detail_path(&self) -> Vec<String> {
        self.trail
            .iter()
            .chain(self.detail.as_ref())
            .map(|d| d.target.subject())
            .collect()
    }

    /// Text cells of one row, as drawn and as the filter searches them.
    pub fn cells(&self, screen: Screen, idx: usize) -> Vec<String> {
        let now = self.server_now_ms();
        match screen {
            Screen::Overview => vec![],
            Screen::Hosts => {
                let Some(h) = self.snap.hosts.get(idx) else {
                    return vec![];
                };
                vec![
                    h.name.clone(),
                    format!("{} {}", crate::model::host_glyph(&h.state), h.state),
                    h.driver.clone(),
                    format!("{}/{}", milli(h.cpu_used_milli), milli(h.cpu_milli)),
                    format!("{}/{}", mib(h.memory_used_mib), mib(h.memory_mib)),
                    h.slots_text(),
                    h.n_vms.to_string(),
                    h.images_text(),
                    h.class.clone(),
                    h.labels.join(","),
                    h.last_probe_ms.map_or("never".into(), |t| {
                        format!("{} ago", duration(now.saturating_sub(t)))
                    }),
                ]
            }
            Screen::Queue => {
                let Some(r) = self.snap.queue.get(idx) else {
                    return vec![];
                };
                let who = match self.queue_grouping {
                    Grouping::None => r.requester.clone(),
                    _ => self.queue_group(idx),
                };
                vec![
                    format!("r{}", r.id),
                    r.position.map_or_else(|| "-".into(), |p| p.to_string()),
                    r.eta_text(now),
                    who,
                    r.shape(),
                    duration(now.saturating_sub(r.submitted_ms)),
                    r.priority.to_string(),
                    r.why.as_ref().map_or("-".into(), |w| w.summary.clone()),
                ]
            }
            Screen::Vms => {
                let Some(v) = self.snap.vms.get(idx) else {
                    return vec![];
                };
                vec![
                    v.name.clone(),
                    crate::model::request_label(v.request),
                    v.template.clone(),
                    v.host.clone().unwrap_or_else(|| "-".into()),
                    format!("{} {}", crate::model::vm_glyph(&v.state), v.state),
                    duration(now.saturating_sub(v.created_ms)),
                ]
            }
            Screen::Breakpoints => {
                let Some(b) = self.snap.breakpoints.get(idx) else {
                    return vec![];
                };
                vec![
                    b.name.clone(),
                    b.owner.clone(),
                    b.host.clone().unwrap_or_else(|| "-".into()),
                    duration(now.saturating_sub(b.held_since_ms)),
                    b.expires_ms.map_or("?".into(), |e| {
                        if e > now {
                            duration(e - now)
                        } else {
                            "expiring".into()
                        }
                    }),
                    VM_KEY_HINTS.into(),
                ]
            }
            Screen::Events => {
                let Some(e) = self.events.get(idx) else {
                    return vec![];
                };
                vec![
                    clock(e.at_ms),
                    e.kind.clone(),
                    e.subject.clone(),
                    e.text.clone(),
                ]
            }
        }
    }

    fn sort_key(&self, screen: Screen, idx: usize, col: usize) -> SortKey {
        let now = self.server_now_ms();
        let num = |n: u64| SortKey::Num(i64::try_from(n).unwrap_or(i64::MAX));
        match (screen, col) {
            (Screen::Hosts, 3) => self.snap.hosts.get(idx).map_or(num(0), |h| {
                num(h.cpu_used_milli.saturating_mul(1000) / h.cpu_milli.max(1))
            }),
            (Screen::Hosts, 4) => self.snap.hosts.get(idx).map_or(num(0), |h| {
                num(h.memory_used_mib.saturating_mul(1000) / h.memory_mib.max(1))
            }),
            (Screen::Hosts, 5) => self.snap.hosts.get(idx).map_or(num(0), |h| {
                let (used, capacity) = h
                    .slots
                    .iter()
                    .fold((0i64, 0i64), |(u, c), s| (u + s.used, c + s.capacity));
                SortKey::Num(used.saturating_mul(1000) / capacity.max(1))
            }),
            (Screen::Hosts, 6) => num(self.snap.hosts.get(idx).map_or(0, |h| h.n_vms)),
            (Screen::Hosts, 7) => num(self
                .snap
                .hosts
                .get(idx)
                .map_or(0, |h| (h.images.len() + h.pulling.len()) as u64)),
            (Screen::Queue, 0) => num(self.snap.queue.get(idx).map_or(0, |r| r.id)),
            // Requests without a position (arrived since the estimate) last.
            (Screen::Queue, 1) => num(self
                .snap
                .queue
                .get(idx)
                .map_or(u64::MAX, |r| r.position.unwrap_or(u64::MAX))),
            // By when they start; "later than" after every estimate, none last.
            (Screen::Queue, 2) => num(self.snap.queue.get(idx).map_or(u64::MAX, |r| {
                match (r.eta_ms, r.eta_after_ms) {
                    (_, Some(after)) => after.saturating_add(1 << 40),
                    (Some(at), None) => at,
                    (None, None) => u64::MAX,
                }
            })),
            (Screen::Queue, 5) => num(self
                .snap
                .queue
                .get(idx)
                .map_or(0, |r| now.saturating_sub(r.submitted_ms))),
            (Screen::Queue, 6) => SortKey::Num(self.snap.queue.get(idx).map_or(0, |r| r.priority)),
            (Screen::Vms, 0) => num(self.snap.vms.get(idx).map_or(0, |v| v.id)),
            (Screen::Vms, 1) => num(self.snap.vms.get(idx).map_or(0, |v| v.request)),
            (Screen::Vms, 5) => num(self
                .snap
                .vms
                .get(idx)
                .map_or(0, |v| now.saturating_sub(v.created_ms))),
            (Screen::Breakpoints, 3) => num(self
                .snap
                .breakpoints
                .get(idx)
                .map_or(0, |b| now.saturating_sub(b.held_since_ms))),
            (Screen::Breakpoints, 4) => num(self
                .snap
                .breakpoints
                .get(idx)
                .and_then(|b| b.expires_ms)
                .unwrap_or(u64::MAX)),
            (Screen::Events, 0) => num(self.events.get(idx).map_or(0, |e| e.at_ms)),
            _ => SortKey::Text(
                self.cells(screen, idx)
                    .into_iter()
                    .nth(col)
                    .unwrap_or_default(),
            ),
        }
    }
}

impl Ord for ClassCapacity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.class.cmp(&other.class)
    }
}
impl PartialOrd for ClassCapacity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Eq for ClassCapacity {}

/// How the queue screen groups its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    None,
    Change,
    Account,
}

impl Grouping {
    fn next(self) -> Grouping {
        match self {
            Grouping::None => Grouping::Change,
            Grouping::Change => Grouping::Account,
            Grouping::Account => Grouping::None,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Grouping::None => "nothing",
            Grouping::Change => "change",
            Grouping::Account => "account",
        }
    }
}

impl App {
    /// The column titles of a table screen as shown now: a grouped queue's fourth column is
    /// the group (CHANGE or ACCOUNT) instead of the requester.
    pub fn titles(&self, screen: Screen) -> Vec<&'static str> {
        let mut titles = columns(screen).to_vec();
        if screen == Screen::Queue {
            let group = match self.queue_grouping {
                Grouping::None => None,
                Grouping::Change => Some("CHANGE"),
                Grouping::Account => Some("ACCOUNT"),
            };
            if let (Some(g), Some(t)) = (group, titles.get_mut(3)) {
                *t = g;
            }
        }
        titles
    }
}

/// The column titles of a table screen.
pub fn columns(screen: Screen) -> &'static [&'static str] {
    match screen {
        Screen::Overview => &[],
        Screen::Hosts => &[
            "HOST", "STATE", "DRIVER", "CPU", "MEMORY", "SLOTS", "VMS", "IMG", "CLASS", "LABELS",
            "PROBED",
        ],
        Screen::Queue => &[
            "REQUEST",
            "POS",
            "ETA",
            "REQUESTER",
            "SHAPE",
            "WAITED",
            "PRIO",
            "WHY WAITING",
        ],
        Screen::Vms => &["VM", "REQUEST", "TEMPLATE", "HOST", "STATE", "AGE"],
        Screen::Breakpoints => &["VM", "OWNER", "HOST", "HELD FOR", "TIME LEFT", "CONSOLE"],
        Screen::Events => &["TIME", "KIND", "SUBJECT", "WHAT"],
    }
}

fn summarize(s: &Snapshot) -> Summary {
    let mut classes: BTreeMap<&str, ClassCapacity> = BTreeMap::new();
    let mut hosts_by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for h in &s.hosts {
        *hosts_by_state.entry(&h.state).or_default() += 1;
        let c = classes.entry(&h.class).or_insert_with(|| ClassCapacity {
            class: h.class.clone(),
            ..ClassCapacity::default()
        });
        c.n_hosts += 1;
        // Hosts that take no VMs offer no capacity.
        if h.state == "ready" {
            c.cpu_milli += h.cpu_milli;
            c.memory_mib += h.memory_mib;
        }
        c.cpu_used_milli += h.cpu_used_milli;
        c.memory_used_mib += h.memory_used_mib;
    }
    let mut vms_by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for v in &s.vms {
        *vms_by_state.entry(&v.state).or_default() += 1;
    }
    Summary {
        classes: classes.into_values().collect(),
        hosts_by_state: hosts_by_state
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        vms_by_state: vms_by_state
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        queue_len: s.queue.len() as u64,
        oldest_wait_ms: s.oldest_wait_ms(),
        n_breakpoints: s.breakpoints.len() as u64,
    }
}

fn extend_consequence(seconds: u64) -> String {
    format!(
        "each hold lasts {} longer (+/- to change)",
        duration(seconds * 1000)
    )
}

pub(crate) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What kind of thing a command's target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    Host,
    Request,
    Vm,
}

impl TargetKind {
    /// The kind of row a screen lists, if its rows can be named.
    fn of_screen(screen: Screen) -> Option<TargetKind> {
        match screen {
            Screen::Hosts => Some(TargetKind::Host),
            Screen::Queue => Some(TargetKind::Request),
            Screen::Vms | Screen::Breakpoints => Some(TargetKind::Vm),
            Screen::Overview | Screen::Events => None,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            TargetKind::Host => "a host (sim-small-1)",
            TargetKind::Request => "a request (r7)",
            TargetKind::Vm => "a VM (berth-vm12)",
        }
    }
}

/// A sort key that puts `r9` before `r10`: the text before the trailing number, then it.
fn natural_key(s: &str) -> (&str, u64) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, tail) = s.split_at(s.len() - digits);
    (head, tail.parse().unwrap_or(0))
}

fn parse_request_key(s: &str) -> Option<u64> {
    s.strip_prefix('r').unwrap_or(s).parse().ok()
}

fn parse_vm_key(s: &str) -> Option<u64> {
    s.strip_prefix("berth-vm").unwrap_or(s).parse().ok()
}

fn action_subject(a: &Action) -> String {
    match a {
        Action::Drain(h) | Action::Resume(h) | Action::Offline(h) => h.clone(),
        Action::Cancel(r) => format!("r{r}"),
        Action::Release(v) | Action::Extend { vm: v, .. } => vm_name(*v),
    }
}

/// `12.5` from milli-units, `8` when whole.
pub fn milli(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{:.1}", m as f64 / 1000.0)
    }
}

/// `14:02:31` (UTC) of a time in ms since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}
