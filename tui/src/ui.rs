//! Drawing: a pure function of the `App` (and the screenshot being shown) onto a ratatui frame.
//! Tables build rows only for what is on screen, so 100,000 VMs cost what 30 do.

use std::collections::BTreeMap;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Clear, LineGauge, Paragraph, Row, Sparkline, SparklineBar, Table, Wrap,
};
use ratatui_image::protocol::StatefulProtocol;
use ratatui_image::{Resize, StatefulImage};

use crate::app::{
    App, Confirm, EventsFollow, Forecast, Input, LogKind, LogView, Popup, VM_KEY_HINTS, clock,
    milli,
};
use crate::event::ConnState;
use crate::keymap::{self, KeyAction, Screen};
use crate::model::{
    DrainPrediction, PULSE_WINDOW_MS, WaitStats, duration, host_glyph, mib, time_bins, vm_glyph,
};

/// Styles, or none of them under `NO_COLOR` (meaning is always in words and glyphs too).
#[derive(Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn bold(self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }

    fn selected(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }

    fn dim(self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default()
        }
    }

    fn host_state(self, state: &str) -> Style {
        self.fg(match state {
            "ready" => Color::Green,
            "draining" => Color::Yellow,
            "maintenance" | "offline" => Color::Blue,
            "error" => Color::Red,
            _ => Color::Gray,
        })
    }

    fn vm_state(self, state: &str) -> Style {
        self.fg(match state {
            "running" => Color::Green,
            "held" => Color::Magenta,
            "failed" | "lost" => Color::Red,
            "queued" => Color::Yellow,
            _ => Color::Cyan,
        })
    }
}

/// Draws the whole console. `image` is the decoded screenshot, when one is shown.
pub fn draw(f: &mut Frame, app: &App, image: Option<&mut StatefulProtocol>) {
    let theme = Theme {
        color: app.opts.color,
    };
    let area = f.area();
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, app, theme, header);
    draw_tabs(f, app, theme, tabs);
    if app.detail.is_some() {
        draw_detail(f, app, theme, body);
    } else {
        match app.screen {
            Screen::Overview => draw_overview(f, app, theme, body),
            s => draw_table(f, app, theme, s, body),
        }
    }
    draw_footer(f, app, theme, footer);
    match &app.popup {
        None => {}
        Some(Popup::Help { scroll }) => draw_help(f, app, theme, *scroll, area),
        Some(Popup::Confirm(c)) => draw_confirm(f, theme, c, area),
        Some(Popup::Vnc {
            info,
            ssh_command,
            url,
        }) => {
            let mut lines = vec![
                Line::from("On your own machine, run:"),
                Line::from(Span::styled(ssh_command.clone(), theme.bold())),
                Line::from("then open:"),
                Line::from(Span::styled(url.clone(), theme.bold())),
            ];
            if let Some(p) = &info.password {
                lines.push(Line::from(format!("password: {p}")));
            }
            lines.push(Line::from(""));
            lines.push(Line::from(
                "Both lines were sent to your clipboard (OSC 52).",
            ));
            lines.push(Line::from(Span::styled("Esc: close", theme.dim())));
            popup(
                f,
                area,
                76,
                lines.len() as u16 + 2,
                &format!(" VNC: {} ", crate::model::vm_name(info.vm)),
                Text::from(lines),
            );
        }
        Some(Popup::Screenshot { vm, status }) => {
            let title = format!(" screenshot: {} (Esc: close) ", crate::model::vm_name(*vm));
            let w = area.width.saturating_sub(4).max(20);
            let h = area.height.saturating_sub(4).max(6);
            let rect = centered(area, w, h);
            f.render_widget(Clear, rect);
            let block = Block::default().borders(Borders::ALL).title(title);
            let inner = block.inner(rect);
            f.render_widget(block, rect);
            match (status, image) {
                (Some(Ok(())), Some(img)) => {
                    f.render_stateful_widget(
                        StatefulImage::default().resize(Resize::Scale(None)),
                        inner,
                        img,
                    );
                }
                (Some(Err(e)), _) => f.render_widget(
                    Paragraph::new(format!("✖ no screenshot: {e}")).wrap(Wrap { trim: true }),
                    inner,
                ),
                _ => f.render_widget(Paragraph::new("… fetching the screenshot"), inner),
            }
        }
        Some(Popup::Log(view)) => draw_log(f, theme, view, area),
    }
}

/// The end of a log, newest line at the bottom, `back` lines scrolled back. Lines are cut at
/// the popup's edge rather than wrapped, so one scroll step is one line of the log.
fn draw_log(f: &mut Frame, theme: Theme, view: &LogView, area: Rect) {
    let (status, back) = (view.status.as_ref(), view.back);
    let (name, empty) = match view.kind {
        LogKind::Serial(vm) => (
            format!("serial log: {}", crate::model::vm_name(vm)),
            "the guest has written nothing on its serial console yet",
        ),
        LogKind::Daemon => ("daemon log".to_owned(), "the daemon has logged nothing yet"),
    };
    let state = if view.follow {
        " · following"
    } else {
        " · paused"
    };
    // The same frame as the screenshot's; `App::serial_rows` counts on it.
    let w = area.width.saturating_sub(4).max(20);
    let h = area.height.saturating_sub(4).max(6);
    let rect = centered(area, w, h);
    f.render_widget(Clear, rect);
    let rows = usize::from(rect.height.saturating_sub(2));
    let scrolls = matches!(status, Some(Ok(lines)) if lines.len() > rows);
    let what = match view.kind {
        LogKind::Serial(_) => "serial log",
        LogKind::Daemon => "daemon log",
    };
    let (title, body) = match status {
        None => (
            format!(" {name} "),
            Paragraph::new(format!("… fetching the {what}")),
        ),
        Some(Err(e)) => (
            format!(" {name} "),
            Paragraph::new(format!("✖ no {what}: {e}")).wrap(Wrap { trim: true }),
        ),
        Some(Ok(lines)) if lines.is_empty() => {
            (format!(" {name} · empty{state} "), Paragraph::new(empty))
        }
        Some(Ok(lines)) => {
            let n = lines.len();
            let end = n - back.min(n.saturating_sub(rows));
            let start = end.saturating_sub(rows);
            let shown: Vec<Line> = lines[start..end]
                .iter()
                .map(|l| Line::from(l.clone()))
                .collect();
            (
                format!(" {name} · lines {}–{end} of {n}{state} ", start + 1),
                Paragraph::new(shown),
            )
        }
    };
    let follow = if view.follow { "f: pause" } else { "f: follow" };
    let keys = if scrolls {
        format!(" j/k PgUp/PgDn: scroll  {follow}  r: fetch again  Esc: close ")
    } else {
        format!(" {follow}  r: fetch again  Esc: close ")
    };
    let keys = Line::from(Span::styled(keys, theme.dim()));
    let block = Block::default()
        .borders(Borders::ALL)
        .title(title)
        .title_bottom(keys);
    f.render_widget(body.block(block), rect);
}

fn conn_text(app: &App) -> (String, Color) {
    let stale = app.stale_ms().map(|ms| format!("stale for {}s", ms / 1000));
    match &app.conn {
        ConnState::Connecting => ("… connecting".into(), Color::Yellow),
        ConnState::Live => match stale {
            None => ("● live".into(), Color::Green),
            Some(s) => (format!("◌ {s}"), Color::Yellow),
        },
        ConnState::Reconnecting { attempt, .. } => {
            let mut t = format!("↻ reconnecting (try {attempt})");
            if let Some(s) = stale {
                t.push_str(&format!(", {s}"));
            }
            (t, Color::Red)
        }
    }
}

fn draw_header(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let (conn, color) = conn_text(app);
    let mut spans = vec![
        Span::styled("berth", theme.bold()),
        Span::raw(" · "),
        Span::styled(conn, theme.fg(color).add_modifier(Modifier::BOLD)),
    ];
    if !app.stream_up && app.conn == ConnState::Live {
        spans.push(Span::styled(" (no event stream)", theme.dim()));
    }
    if app.read_only {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled("READ-ONLY", theme.bold()));
    }
    spans.push(Span::raw(" · "));
    spans.push(Span::raw(app.opts.source_label.clone()));
    let mut clock_text = format!(" {} UTC", clock(app.now_ms));
    if let Some(skew) = app.clock_skew_ms() {
        clock_text = format!(" daemon {:+}s ·{clock_text}", skew / 1000);
    }
    let [left, right] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(clock_text.chars().count() as u16),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(Line::from(spans)), left);
    f.render_widget(Paragraph::new(clock_text), right);
}

fn draw_tabs(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let mut spans = Vec::new();
    for (i, s) in Screen::ALL.iter().enumerate() {
        let label = format!("{} {}", i + 1, s.title());
        if *s == app.screen {
            spans.push(Span::styled(format!("[{label}]"), theme.selected()));
        } else {
            spans.push(Span::raw(format!(" {label} ")));
        }
        spans.push(Span::raw(" "));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_footer(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let line = match &app.input {
        Some(Input::Filter) => {
            let filter = app
                .table(app.screen)
                .map(|t| t.filter.clone())
                .unwrap_or_default();
            Line::from(vec![
                Span::styled("/", theme.bold()),
                Span::raw(filter),
                Span::raw("█  Enter: keep  Esc: clear"),
            ])
        }
        Some(Input::Command(text)) => {
            let matches = app.command_candidates(text).join(" ");
            Line::from(vec![
                Span::styled(":", theme.bold()),
                Span::raw(text.clone()),
                Span::raw("█  "),
                Span::styled(matches, theme.dim()),
            ])
        }
        None => match &app.flash {
            Some(msg) => Line::from(Span::styled(msg.clone(), theme.bold())),
            None => match &app.conn {
                ConnState::Reconnecting { error, .. } => {
                    Line::from(Span::styled(format!("✖ {error}"), theme.bold()))
                }
                _ => Line::from(Span::styled(hints(app), theme.dim())),
            },
        },
    };
    let mut right = String::new();
    if app.input.is_none()
        && app.detail.is_none()
        && let Some(t) = app.table(app.screen)
    {
        right = format!(" {}/{}", (t.selected + 1).min(t.view.len()), t.view.len());
        if t.view.len() != app.n_rows(app.screen) {
            right.push_str(&format!(" of {}", app.n_rows(app.screen)));
        }
        if !t.marks.is_empty() {
            right.push_str(&format!(" · {} marked", t.marks.len()));
        }
        if !t.filter.is_empty() {
            right.push_str(&format!(" · /{}", t.filter));
        }
    }
    let [left_area, right_area] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(right.chars().count() as u16),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(line), left_area);
    f.render_widget(Paragraph::new(right), right_area);
}

/// The footer's key hints: the bindings of this screen, from the keymap.
fn hints(app: &App) -> String {
    let mut parts = vec!["? help".to_owned(), ": cmd".to_owned()];
    if let Some(d) = &app.detail {
        if !app.links(&d.target).is_empty() {
            parts.push("j/k choose  Enter open".into());
        }
        parts.push("Esc back".into());
        return parts.join("  ");
    }
    for b in keymap::bindings(app.read_only) {
        let show = b.changes
            || matches!(
                b.action,
                KeyAction::Filter | KeyAction::Vnc | KeyAction::Enter
            );
        if show
            && let keymap::Scope::On(s) = b.scope
            && s.contains(&app.screen)
        {
            let key = b.keys.first().map(|k| k.label()).unwrap_or_default();
            let name = b.command.unwrap_or(match b.action {
                KeyAction::Enter => "open",
                _ => "",
            });
            parts.push(format!("{key} {name}"));
        }
    }
    parts.join("  ")
}

/// The overview's height from which on-call panels fill the space below the gauges and the
/// fleet (120×40 has it, 80×24 does not).
const ONCALL_HEIGHT_MIN: u16 = 30;
/// Columns of an overview plot's labels, left of the plotted time.
const PULSE_LABEL_COLS: u16 = 21;

fn draw_overview(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let tall = area.height >= ONCALL_HEIGHT_MIN;
    let plot_rows = pulse_rows(app, tall);
    // The plots take what they need, but leave the gauges and the fleet ten rows.
    let rows_height: u16 = plot_rows.iter().map(|r| r.height).sum();
    let plot_height = (rows_height + 3).min(area.height.saturating_sub(10));
    let [top, plots] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(plot_height)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(58), Constraint::Percentage(42)]).areas(top);
    let fleet = fleet_lines(app, theme);
    let gauges = app.summary.classes.len() as u16 * 2 + 2;
    // Under fair share, a row per account (the first few in the order of service).
    let accounts = match active_accounts(app).count() as u16 {
        0 => 0,
        n => n.min(ACCOUNT_ROWS_MAX) + 2,
    };
    if tall {
        let errors = app.snap.hosts.iter().filter(|h| h.state == "error").count() as u16;
        let [gauge_area, accounts_area, waits_area, errors_area] = Layout::vertical([
            Constraint::Length(gauges),
            Constraint::Length(accounts),
            Constraint::Fill(1),
            Constraint::Length(errors.clamp(1, 5) + 2),
        ])
        .areas(left);
        draw_accounts(f, app, theme, accounts_area);
        let [fleet_area, actions_area] = Layout::vertical([
            Constraint::Length(fleet.len() as u16 + 2),
            Constraint::Fill(1),
        ])
        .areas(right);
        draw_capacity(f, app, theme, gauge_area);
        draw_oldest_waits(f, app, waits_area);
        draw_hosts_in_error(f, app, theme, errors_area);
        draw_fleet(f, fleet, fleet_area);
        draw_operator_actions(f, app, actions_area);
    } else {
        // The capacity gauges keep their rows; the accounts take what is left below them.
        let [gauge_area, accounts_area] = Layout::vertical([
            Constraint::Min(gauges.min(left.height)),
            Constraint::Max(accounts),
        ])
        .areas(left);
        draw_capacity(f, app, theme, gauge_area);
        draw_accounts(f, app, theme, accounts_area);
        draw_fleet(f, fleet, right);
    }
    draw_pulses(f, app, theme, plot_rows, plots);
}

/// The accounts the overview lists: those entitled to a share now (holding capacity, waiting
/// or with recent usage), in the order of service; idle ones are left to `berth account list`.
fn active_accounts(app: &App) -> impl Iterator<Item = &berth_api::AccountRow> {
    app.snap
        .accounts
        .iter()
        .filter(|a| a.share > 0.0 || a.usage_share > 0.0)
}

/// The most accounts the overview lists (`berth account list` has them all).
const ACCOUNT_ROWS_MAX: u16 = 6;

/// Accounts under fair share in the order the queue serves them: each one's share of recent
/// usage against the share it is entitled to (the bar fills to its usage; yellow past its
/// share), and the vCPUs it holds.
fn draw_accounts(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let accounts: Vec<&berth_api::AccountRow> = active_accounts(app).collect();
    if area.height < 3 || accounts.is_empty() {
        return;
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" accounts: used / entitled share ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows = accounts.len();
    let shown = usize::from(inner.height).min(rows);
    for (i, a) in accounts.iter().take(shown).enumerate() {
        let y = inner.y + i as u16;
        if i + 1 == shown && shown < rows {
            let more = format!("… {} more: berth account list", rows - shown + 1);
            f.render_widget(
                Paragraph::new(more).style(theme.dim()),
                Rect::new(inner.x, y, inner.width, 1),
            );
            break;
        }
        let over = a.usage_share > a.share;
        let label = format!(
            "{:<10.10} {:>3.0}%/{:>3.0}% {:>4} cpu",
            a.account,
            a.usage_share * 100.0,
            a.share * 100.0,
            milli(a.holding_vcpus_milli.max(0) as u64)
        );
        let bar = LineGauge::default()
            .ratio(a.usage_share.clamp(0.0, 1.0))
            .label(label)
            .filled_style(theme.fg(if over { Color::Yellow } else { Color::Green }))
            .unfilled_style(theme.dim())
            .filled_symbol("█")
            .unfilled_symbol("░");
        f.render_widget(bar, Rect::new(inner.x, y, inner.width, 1));
    }
}

/// Capacity by host class: one CPU and one memory gauge per class.
fn draw_capacity(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let s = &app.summary;
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" capacity by host class (ready hosts) ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows_max = usize::from(inner.height);
    let mut y = inner.y;
    let per_class = if s.classes.len() * 2 <= rows_max {
        2
    } else {
        1
    };
    for c in &s.classes {
        if y + per_class as u16 > inner.y + inner.height {
            break;
        }
        let cpu = ratio(c.cpu_used_milli, c.cpu_milli);
        let label = format!(
            "{:<10.10} cpu {:>5}/{:<5}",
            c.class,
            milli(c.cpu_used_milli),
            milli(c.cpu_milli)
        );
        f.render_widget(
            gauge(theme, label, cpu),
            Rect::new(inner.x, y, inner.width, 1),
        );
        y += 1;
        if per_class == 2 {
            let mem = ratio(c.memory_used_mib, c.memory_mib);
            let label = format!(
                "{:<10.10} mem {:>5}/{:<5}",
                if c.n_hosts == 1 {
                    "1 host".to_owned()
                } else {
                    format!("{} hosts", c.n_hosts)
                },
                mib(c.memory_used_mib),
                mib(c.memory_mib)
            );
            f.render_widget(
                gauge(theme, label, mem),
                Rect::new(inner.x, y, inner.width, 1),
            );
            y += 1;
        }
    }
    if s.classes.is_empty() {
        f.render_widget(Paragraph::new("no hosts"), inner);
    }
}

/// Hosts, queue, breakpoints and VMs by state.
fn fleet_lines(app: &App, theme: Theme) -> Vec<Line<'static>> {
    let s = &app.summary;
    let mut lines = vec![Line::from(Span::styled("hosts", theme.bold()))];
    for (state, n) in &s.hosts_by_state {
        lines.push(Line::from(vec![
            Span::styled(
                format!(" {} {:<12}", host_glyph(state), state),
                theme.host_state(state),
            ),
            Span::raw(format!("{n:>7}")),
        ]));
    }
    lines.push(Line::from(Span::styled("queue", theme.bold())));
    lines.push(Line::from(format!(" requests waiting {:>6}", s.queue_len)));
    lines.push(Line::from(format!(
        " oldest wait      {:>6}",
        s.oldest_wait_ms.map_or("-".into(), duration)
    )));
    lines.push(Line::from(vec![
        Span::styled("breakpoints held ", theme.bold()),
        Span::raw(format!("{:>6}", s.n_breakpoints)),
    ]));
    lines.push(Line::from(Span::styled("vms", theme.bold())));
    for (state, n) in &s.vms_by_state {
        lines.push(Line::from(vec![
            Span::styled(
                format!(" {} {:<12}", vm_glyph(state), state),
                theme.vm_state(state),
            ),
            Span::raw(format!("{n:>7}")),
        ]));
    }
    lines
}

fn draw_fleet(f: &mut Frame, lines: Vec<Line<'static>>, area: Rect) {
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" fleet ")),
        area,
    );
}

/// The requests that have waited longest, with why.
fn draw_oldest_waits(f: &mut Frame, app: &App, area: Rect) {
    let now = app.server_now_ms();
    let mut waiting: Vec<_> = app.snap.queue.iter().collect();
    waiting.sort_by_key(|r| (r.submitted_ms, r.id));
    let lines: Vec<Line> = if waiting.is_empty() {
        vec![Line::from("nothing waits")]
    } else {
        waiting
            .iter()
            .map(|r| {
                let why = r.why.as_ref().map_or("", |w| w.summary.as_str());
                Line::from(format!(
                    "r{:<5} {:>6}  {:<18.18} {why}",
                    r.id,
                    duration(now.saturating_sub(r.submitted_ms)),
                    r.shape()
                ))
            })
            .collect()
    };
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" oldest waits "),
        ),
        area,
    );
}

/// Hosts in error, with when they last answered a probe.
fn draw_hosts_in_error(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let now = app.server_now_ms();
    let errors: Vec<_> = app
        .snap
        .hosts
        .iter()
        .filter(|h| h.state == "error")
        .collect();
    let lines: Vec<Line> = if errors.is_empty() {
        vec![Line::from("none")]
    } else {
        errors
            .iter()
            .map(|h| {
                let probe = h
                    .last_probe_ms
                    .map_or("never answered a probe".to_owned(), |at| {
                        format!("last answered {} ago", duration(now.saturating_sub(at)))
                    });
                Line::from(vec![
                    Span::styled(
                        format!("{} {:<16}", host_glyph("error"), h.name),
                        theme.host_state("error"),
                    ),
                    Span::raw(format!(" {:<10.10} {probe}", h.class)),
                ])
            })
            .collect()
    };
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" hosts in error ({}) ", errors.len())),
        ),
        area,
    );
}

/// The operators' recent doings the console saw, newest first.
fn draw_operator_actions(f: &mut Frame, app: &App, area: Rect) {
    let lines: Vec<Line> = app
        .events
        .iter()
        .filter(|e| e.is_operator_action())
        .take(usize::from(area.height.saturating_sub(2)))
        .map(|e| Line::from(format!("{} {} {}", clock(e.at_ms), e.subject, e.text)))
        .collect();
    let lines = if lines.is_empty() {
        vec![Line::from("none since the console started")]
    } else {
        lines
    };
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" recent operator actions "),
        ),
        area,
    );
}

/// What a row of the pulse plots reads from a pulse (`None`: nothing to plot in it).
type PulseValue = Box<dyn Fn(&berth_api::Pulse) -> Option<u64>>;

/// One row of the pulse plots: its label, what it plots from a pulse, and its scale.
struct PulseRow {
    label: String,
    value: PulseValue,
    /// The value at the top of the row; `None`: the largest plotted.
    max: Option<u64>,
    /// Rows of the terminal it takes.
    height: u16,
}

/// The rows the overview plots: the queue, then each class's vCPU use and, for a class with
/// slots, its fullest slot kind's use (in percent).
fn pulse_rows(app: &App, tall: bool) -> Vec<PulseRow> {
    let pulses = &app.snap.pulses;
    let latest = pulses.last();
    let mut rows = vec![PulseRow {
        label: format!(
            "queue {:>5} waiting",
            latest.map_or("-".to_owned(), |p| p.waiting_requests.to_string())
        ),
        value: Box::new(|p| Some(p.waiting_requests)),
        max: None,
        height: if tall { 3 } else { 1 },
    }];
    // Every class of the hour, and whether it had slots in it: a class whose hosts left
    // service keeps its rows, blank from then on.
    let mut classes: BTreeMap<&str, bool> = BTreeMap::new();
    for p in pulses {
        for c in &p.classes {
            *classes.entry(&c.class).or_default() |= !c.slots.is_empty();
        }
    }
    let now = |class: &str| latest.and_then(|p| p.classes.iter().find(|c| c.class == class));
    let pct = |v: Option<f64>| v.map_or("   -".to_owned(), |r| format!("{:>3.0}%", r * 100.0));
    let percent = |r: Option<f64>| r.map(|r| (r * 100.0).round() as u64);
    for (class, has_slots) in classes {
        let name = class.to_owned();
        rows.push(PulseRow {
            label: format!(
                "{class:<10.10} cpu  {}",
                pct(now(class).and_then(|c| c.vcpu_utilisation()))
            ),
            value: Box::new(move |p| {
                percent(
                    p.classes
                        .iter()
                        .find(|c| c.class == name)?
                        .vcpu_utilisation(),
                )
            }),
            max: Some(100),
            height: 1,
        });
        if has_slots {
            let name = class.to_owned();
            rows.push(PulseRow {
                label: format!(
                    "{:<10.10} slot {}",
                    "",
                    pct(now(class).and_then(|c| c.slot_utilisation()))
                ),
                value: Box::new(move |p| {
                    percent(
                        p.classes
                            .iter()
                            .find(|c| c.class == name)?
                            .slot_utilisation(),
                    )
                }),
                max: Some(100),
                height: 1,
            });
        }
    }
    rows
}

/// The last hour of the daemon's pulses: one sparkline per row on a shared time axis, each
/// column a slice of the hour; after the hour's first pulse, `·` where none was taken (the
/// daemon was down) or the row had nothing to plot (the class had no host in service).
fn draw_pulses(f: &mut Frame, app: &App, theme: Theme, rows: Vec<PulseRow>, area: Rect) {
    let end_ms = app.server_now_ms();
    let block = Block::default().borders(Borders::ALL).title(format!(
        " last hour, from the daemon's pulses ({}) ",
        match app.snap.pulses.len() {
            0 => "none yet".to_owned(),
            n => format!("{n} samples"),
        }
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.height < 2 || inner.width <= PULSE_LABEL_COLS + 4 {
        return;
    }
    let cols = inner.width - PULSE_LABEL_COLS;
    let bottom = inner.y + inner.height - 1;
    let first_sampled = time_bins(
        &app.snap.pulses,
        end_ms,
        PULSE_WINDOW_MS,
        usize::from(cols),
        |_| Some(0),
    )
    .iter()
    .position(Option::is_some);
    let mut y = inner.y;
    for row in rows {
        let height = row.height.min(bottom.saturating_sub(y));
        if height == 0 {
            break;
        }
        let bins = time_bins(
            &app.snap.pulses,
            end_ms,
            PULSE_WINDOW_MS,
            usize::from(cols),
            &row.value,
        );
        let max = row
            .max
            .unwrap_or_else(|| bins.iter().flatten().copied().max().unwrap_or(0).max(1));
        let mut label = vec![Line::from(row.label.clone())];
        if height > 1 && row.max.is_none() {
            label.push(Line::from(format!("{:>20}", format!("max {max}"))));
        }
        f.render_widget(
            Paragraph::new(label),
            Rect::new(inner.x, y, PULSE_LABEL_COLS, height),
        );
        // Before the first sample of the hour the plot stays blank; after it, `·` marks the
        // slices without one.
        let first = first_sampled.unwrap_or(bins.len()) as u16;
        let bars: Vec<SparklineBar> = bins[usize::from(first)..]
            .iter()
            .map(|&b| SparklineBar::from(b))
            .collect();
        f.render_widget(
            Sparkline::default()
                .data(bars)
                .max(max)
                .absent_value_symbol("·")
                .style(theme.fg(Color::Cyan)),
            Rect::new(inner.x + PULSE_LABEL_COLS + first, y, cols - first, height),
        );
        y += height;
    }
    // The time axis: an hour ago, half an hour ago, now.
    let mut axis = vec![' '; usize::from(cols)];
    let mut put = |at: usize, text: &str| {
        for (i, ch) in text.chars().enumerate() {
            if let Some(slot) = axis.get_mut(at + i) {
                *slot = ch;
            }
        }
    };
    let cols = usize::from(cols);
    put(0, "-60m");
    put((cols / 2).saturating_sub(2), "-30m");
    put(cols.saturating_sub(3), "now");
    f.render_widget(
        Paragraph::new(Line::from(axis.into_iter().collect::<String>()).style(theme.dim())),
        Rect::new(
            inner.x + PULSE_LABEL_COLS,
            bottom,
            inner.width - PULSE_LABEL_COLS,
            1,
        ),
    );
}

fn ratio(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    }
}

fn gauge(theme: Theme, label: String, r: f64) -> LineGauge<'static> {
    let pct = (r * 100.0).round() as u64;
    let color = if r > 0.9 {
        Color::Red
    } else if r > 0.7 {
        Color::Yellow
    } else {
        Color::Green
    };
    LineGauge::default()
        .ratio(r)
        .label(format!("{label} {pct:>3}%"))
        .filled_style(theme.fg(color))
        .unfilled_style(theme.dim())
        .filled_symbol("█")
        .unfilled_symbol("░")
}

fn draw_table(f: &mut Frame, app: &App, theme: Theme, screen: Screen, area: Rect) {
    let Some(t) = app.table(screen) else {
        return;
    };
    let titles = app.titles(screen);
    let page = usize::from(area.height.saturating_sub(3).max(1));
    // The stored offset keeps the selection in view for the page size the app knows; clamp
    // it again for this area.
    let mut offset = t.offset.min(t.selected);
    if t.selected >= offset + page {
        offset = t.selected + 1 - page;
    }
    let end = (offset + page).min(t.view.len());
    let visible = &t.view[offset.min(end)..end];
    let mut widths: Vec<usize> = titles.iter().map(|s| s.chars().count()).collect();
    let mut rows = Vec::with_capacity(visible.len());
    for (pos, &idx) in visible.iter().enumerate() {
        let cells = app.cells(screen, idx);
        for (w, c) in widths.iter_mut().zip(&cells) {
            *w = (*w).max(c.chars().count());
        }
        let key = app.row_key(screen, idx).unwrap_or_default();
        let cursor = if offset + pos == t.selected {
            "›"
        } else {
            " "
        };
        let mark = if t.marks.contains(&key) { "✔" } else { " " };
        let state_col = state_column(screen);
        let mut row_cells: Vec<ratatui::widgets::Cell> = Vec::with_capacity(cells.len() + 1);
        row_cells.push(format!("{cursor}{mark}").into());
        for (i, c) in cells.into_iter().enumerate() {
            let style = match (state_col, screen) {
                (Some(sc), Screen::Hosts) if sc == i => {
                    theme.host_state(c.split(' ').nth(1).unwrap_or(""))
                }
                (Some(sc), _) if sc == i => theme.vm_state(c.split(' ').nth(1).unwrap_or("")),
                _ => Style::default(),
            };
            row_cells.push(ratatui::widgets::Cell::from(c).style(style));
        }
        let mut row = Row::new(row_cells);
        if offset + pos == t.selected {
            row = row.style(theme.selected());
        }
        rows.push(row);
    }
    // Columns that do not fit are left out from the right (the filter still searches them);
    // the last shown column takes what is left, truncated.
    let mut constraints = vec![Constraint::Length(2)];
    let mut room = usize::from(area.width.saturating_sub(2)).saturating_sub(3);
    let last = widths.len().saturating_sub(1);
    for (i, w) in widths.iter().enumerate() {
        let w = (*w).min(40);
        if i == last || w + 1 >= room {
            if room >= 6 || i == 0 {
                constraints.push(Constraint::Fill(1));
            }
            break;
        }
        constraints.push(Constraint::Length(w as u16));
        room -= w + 1;
    }
    let sort = if t.sort_col == 0 && !t.sort_reverse {
        String::new()
    } else {
        format!(
            " · by {} {}",
            titles
                .get(t.sort_col)
                .copied()
                .unwrap_or("?")
                .to_lowercase(),
            if t.sort_reverse { "↓" } else { "↑" }
        )
    };
    let header_cells: Vec<ratatui::widgets::Cell> = std::iter::once(" ".into())
        .chain(titles.iter().map(|s| (*s).into()))
        .collect();
    let table = Table::new(rows, constraints)
        .header(Row::new(header_cells).style(theme.bold()))
        .column_spacing(1)
        .block(Block::default().borders(Borders::ALL).title(format!(
            " {} ({}){sort}{} ",
            screen.title(),
            t.view.len(),
            follow_state(app, screen),
        )));
    f.render_widget(table, area);
    if t.view.is_empty() {
        let msg = if t.filter.is_empty() {
            format!("no {}", screen.title())
        } else {
            format!("nothing matches /{}", t.filter)
        };
        let inner = Rect::new(area.x + 2, area.y + 2, area.width.saturating_sub(4), 1);
        f.render_widget(Paragraph::new(msg), inner);
    }
}

/// The events screen's follow state, for its title: following the newest event, or paused
/// on the chosen one with how many came since.
fn follow_state(app: &App, screen: Screen) -> String {
    if screen != Screen::Events {
        return String::new();
    }
    match app.events_follow {
        EventsFollow::Following => " · following newest".into(),
        EventsFollow::Paused { seq } => match app.event_index(seq) {
            Some(0) | None => " · paused (f: follow)".into(),
            Some(n) => format!(" · paused, {n} newer (f: follow)"),
        },
    }
}

fn state_column(screen: Screen) -> Option<usize> {
    match screen {
        Screen::Hosts => Some(1),
        Screen::Vms => Some(4),
        _ => None,
    }
}

fn draw_detail(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let Some(d) = &app.detail else {
        return;
    };
    // With a console panel beside it, the fields' box (and its title) is that much narrower.
    let panel = match &d.content {
        Some(Ok(x)) if x.console.is_some() => 38,
        _ => 0,
    };
    let title = detail_title(app, usize::from(area.width.saturating_sub(panel)));
    let detail = match &d.content {
        Some(Ok(d)) => d,
        // The drill-down list comes from the snapshot: it shows while the details load.
        other => {
            let text = match other {
                Some(Err(e)) => format!("✖ {e}"),
                _ => "… loading".to_owned(),
            };
            let links = app.links(&d.target);
            let links_h = if links.is_empty() {
                0
            } else {
                (links.len() as u16 + 2).min((area.height / 3).max(3))
            };
            let [top, links_area] =
                Layout::vertical([Constraint::Fill(1), Constraint::Length(links_h)]).areas(area);
            f.render_widget(
                Paragraph::new(text)
                    .wrap(Wrap { trim: true })
                    .block(Block::default().borders(Borders::ALL).title(title)),
                top,
            );
            if !links.is_empty() {
                draw_links(f, app, theme, &d.target, &links, links_area);
            }
            return;
        }
    };
    let has_console = detail.console.is_some();
    let links = app.links(&d.target);
    // The drill-down list takes up to a third of the view; the history what is left.
    let links_h = if links.is_empty() {
        0
    } else {
        (links.len() as u16 + 2).min((area.height / 3).max(3))
    };
    let [top, links_area, bottom] = Layout::vertical([
        Constraint::Length((detail.fields.len() as u16 + 2).min(area.height / 2)),
        Constraint::Length(links_h),
        Constraint::Fill(1),
    ])
    .areas(area);
    if !links.is_empty() {
        draw_links(f, app, theme, &d.target, &links, links_area);
    }
    let [fields_area, console_area] = if has_console {
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(38)]).areas(top)
    } else {
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(0)]).areas(top)
    };
    let key_w = detail
        .fields
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let lines: Vec<Line> = detail
        .fields
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:<key_w$} "), theme.bold()),
                Span::raw(v.clone()),
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        fields_area,
    );
    if let Some(c) = &detail.console {
        let lines = match c {
            Ok(info) => vec![
                Line::from(format!("vnc  {}", info.vnc_url())),
                Line::from(if info.password.is_some() {
                    "password set (shown with v)"
                } else {
                    "no password"
                }),
                Line::from(Span::styled(VM_KEY_HINTS, theme.dim())),
            ],
            Err(e) => vec![Line::from(format!("✖ {e}"))],
        };
        f.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: true })
                .block(Block::default().borders(Borders::ALL).title(" console ")),
            console_area,
        );
    }
    // The history: the source's timeline, then the live events about this target that came
    // after it (those before are in the timeline already), in time order.
    let subject = d.target.subject();
    let mut entries: Vec<(u64, String)> = detail
        .timeline
        .iter()
        .map(|t| (t.at_ms, t.text.clone()))
        .collect();
    let known_until = entries.iter().map(|e| e.0).max().unwrap_or(0);
    entries.extend(
        app.events
            .iter()
            .filter(|e| e.subject == subject && e.at_ms > known_until)
            .map(|e| (e.at_ms, format!("{}: {}", e.kind, e.text))),
    );
    entries.sort_by_key(|e| e.0);
    entries.dedup();
    let lines: Vec<Line> = entries
        .iter()
        .skip(d.scroll)
        .map(|(at, text)| {
            Line::from(vec![
                Span::styled(format!("{}  ", clock(*at)), theme.dim()),
                Span::raw(text.clone()),
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" history ({}) ", entries.len())),
        ),
        bottom,
    );
}

/// The detail view's title: the drill-down path, cut from the left to fit a box `width`
/// columns wide less its two borders.
fn detail_title(app: &App, width: usize) -> String {
    let Some(d) = &app.detail else {
        return String::new();
    };
    let back = if app.trail.is_empty() {
        "Esc: back"
    } else {
        "Esc: up"
    };
    const SEP: &str = " › ";
    // ` PATH (BACK) ` and the two corners.
    let room = width.saturating_sub(back.len() + 5 + 2);
    let path = app.detail_path();
    let earlier = &path[..path.len().saturating_sub(1)];
    let mut shown: Vec<String> = vec![d.target.label()];
    let mut len = shown[0].chars().count();
    // Earlier steps by their names, newest first, while they fit (with `… › ` before them
    // when steps are left out).
    for (i, step) in earlier.iter().enumerate().rev() {
        let with = len + SEP.chars().count() + step.chars().count();
        let cut = if i > 0 { 4 } else { 0 };
        if with + cut > room {
            shown.push("…".into());
            break;
        }
        shown.push(step.clone());
        len = with;
    }
    shown.reverse();
    format!(" {} ({back}) ", shown.join(SEP))
}

/// The rows a detail view leads to, the chosen one marked: Enter opens it.
fn draw_links(
    f: &mut Frame,
    app: &App,
    theme: Theme,
    target: &crate::model::Target,
    links: &[crate::model::Target],
    area: Rect,
) {
    use crate::model::Target;
    let title = match target {
        Target::Host(h) => format!(" VMs on {h} ({}) · Enter: open ", links.len()),
        Target::Request(r) => format!(" VMs of r{r} ({}) · Enter: open ", links.len()),
        Target::Vm(_) => " request and host · Enter: open ".to_owned(),
    };
    let chosen = app.link_position(links);
    let rows = usize::from(area.height.saturating_sub(2)).max(1);
    let first = chosen.saturating_sub(rows - 1);
    let lines: Vec<Line> = links
        .iter()
        .enumerate()
        .skip(first)
        .take(rows)
        .map(|(i, l)| {
            let text = app.link_text(l);
            if i == chosen {
                Line::from(Span::styled(format!("› {text}"), theme.selected()))
            } else {
                Line::from(format!("  {text}"))
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn draw_help(f: &mut Frame, app: &App, theme: Theme, scroll: usize, area: Rect) {
    let mut lines = Vec::new();
    for (keys, help, scope) in keymap::help_lines(app.read_only) {
        let scope = if scope.is_empty() {
            String::new()
        } else {
            format!("  [{scope}]")
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{keys:<14}"), theme.bold()),
            Span::raw(help),
            Span::styled(scope, theme.dim()),
        ]));
    }
    let title = if app.read_only {
        " keys · read-only: no actions (j/k scroll, Esc close) "
    } else {
        " keys · Shift-letters change things, always asked first (j/k, Esc) "
    };
    let h = (lines.len() as u16 + 2).min(area.height.saturating_sub(2));
    let text: Vec<Line> = lines.into_iter().skip(scroll).collect();
    popup(f, area, 78, h, title, Text::from(text));
}

/// Width of the label column of a forecast table.
const FORECAST_LABEL_WIDTH: usize = 14;

/// A forecast table's rows: the header, then without and with the drain for each group of
/// requests. A lone group (the queue, when the daemon replayed no arrivals) has no heading;
/// under headings the rows are indented.
fn forecast_table(groups: &[(String, &WaitStats, &WaitStats)]) -> Vec<Line<'static>> {
    let indent = if groups.len() > 1 { "  " } else { "" };
    let w = FORECAST_LABEL_WIDTH + indent.len();
    let mut lines = vec![Line::from(format!(
        " {:<w$}{:>8}{:>8}{:>8}{:>9}",
        "queue wait", "mean", "p95", "max", "waiting"
    ))];
    for (heading, without, with) in groups {
        if groups.len() > 1 {
            lines.push(Line::from(format!(" {heading}")));
        }
        for (label, s) in [("without drain", without), ("with drain", with)] {
            lines.push(Line::from(format!(
                " {:<w$}{:>8}{:>8}{:>8}{:>9}",
                format!("{indent}{label}"),
                duration(s.mean_wait_ms),
                duration(s.p95_wait_ms),
                duration(s.max_wait_ms),
                s.still_waiting
            )));
        }
    }
    lines
}

fn forecast_lines(theme: Theme, p: &DrainPrediction) -> Vec<Line<'static>> {
    let horizon = duration(p.horizon_ms);
    let mut groups = vec![("requests waiting now".to_owned(), &p.without, &p.with)];
    if let Some(a) = &p.arrivals {
        let noun = if a.requests == 1 {
            "request"
        } else {
            "requests"
        };
        groups.push((
            format!("next {horizon} like the last ({} {noun})", a.requests),
            &a.without,
            &a.with,
        ));
    }
    let mut lines = vec![Line::from(Span::styled(
        format!("forecast, next {horizon} (simulated on a copy):"),
        theme.bold(),
    ))];
    lines.extend(forecast_table(&groups));
    lines
}

/// Width of a confirmation dialog, borders included.
const CONFIRM_WIDTH: u16 = 74;

fn draw_confirm(f: &mut Frame, theme: Theme, c: &Confirm, area: Rect) {
    let mut lines = vec![
        Line::from(vec![
            Span::styled("targets: ", theme.bold()),
            Span::raw(c.labels.join(", ")),
        ]),
        Line::from(vec![
            Span::styled("effect:  ", theme.bold()),
            Span::raw(c.consequence.clone()),
        ]),
    ];
    if let Some(note) = &c.note {
        lines.push(Line::from(vec![
            Span::styled("note:    ", theme.bold()),
            Span::raw(note.clone()),
        ]));
    }
    if c.kind == KeyAction::Drain {
        lines.push(Line::from(""));
        match &c.forecast {
            Forecast::NotAsked => {}
            Forecast::Pending => lines.push(Line::from("forecast: … simulating")),
            Forecast::Unavailable(why) => {
                lines.push(Line::from(format!("forecast: unavailable ({why})")));
            }
            Forecast::Ready(p) => lines.extend(forecast_lines(theme, p)),
        }
    }
    lines.push(Line::from(""));
    let verb = c.title.split(' ').next().unwrap_or("confirm").to_owned();
    if let Some(name) = &c.type_to_confirm {
        lines.push(Line::from(format!(
            "type the host name ({name}) and press Enter:"
        )));
        let ok = c.typed == *name;
        lines.push(Line::from(vec![
            Span::raw("> "),
            Span::styled(c.typed.clone(), theme.bold()),
            Span::raw("█"),
            Span::raw(if ok { "  ✓ matches" } else { "" }),
        ]));
        lines.push(Line::from(Span::styled("Esc: cancel", theme.dim())));
    } else {
        lines.push(Line::from(vec![
            Span::styled(format!("y/Enter: {verb}"), theme.bold()),
            Span::raw(if c.held.is_empty() {
                String::new()
            } else {
                format!(
                    "    r: {verb} and release {}",
                    crate::app::plural(c.held.len(), "held VM")
                )
            }),
            Span::raw("    n/Esc: back"),
            Span::raw(if c.kind == KeyAction::Extend {
                "    +/-: 1h more/less"
            } else {
                ""
            }),
        ]));
    }
    // Long lines (the effect) wrap: count the rows they take, or the last lines (what to
    // press) fall off the bottom of the dialog.
    let inner_w = CONFIRM_WIDTH.min(area.width).saturating_sub(2);
    let text = Text::from(lines);
    let rows = Paragraph::new(text.clone())
        .wrap(Wrap { trim: false })
        .line_count(inner_w);
    let h = u16::try_from(rows).unwrap_or(u16::MAX).saturating_add(2);
    popup(f, area, CONFIRM_WIDTH, h, &format!(" {}? ", c.title), text);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn popup(f: &mut Frame, area: Rect, w: u16, h: u16, title: &str, text: Text<'static>) {
    let rect = centered(area, w, h);
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(title.to_owned()),
        ),
        rect,
    );
}
