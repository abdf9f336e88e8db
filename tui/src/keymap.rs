//! The keymap as data: one table from which key handling, the `?` help and the `:` command bar
//! are all generated, so they cannot disagree.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// The screens, in the order of their number keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Screen {
    Overview,
    Hosts,
    Queue,
    Vms,
    Breakpoints,
    Events,
}

impl Screen {
    pub const ALL: [Screen; 6] = [
        Screen::Overview,
        Screen::Hosts,
        Screen::Queue,
        Screen::Vms,
        Screen::Breakpoints,
        Screen::Events,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Overview => "overview",
            Screen::Hosts => "hosts",
            Screen::Queue => "queue",
            Screen::Vms => "vms",
            Screen::Breakpoints => "breakpoints",
            Screen::Events => "events",
        }
    }
}

/// What a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAction {
    Help,
    CommandBar,
    Filter,
    Up,
    Down,
    Top,
    Bottom,
    PageUp,
    PageDown,
    Enter,
    Back,
    Mark,
    SortNext,
    SortPrev,
    SortReverse,
    /// The queue screen groups its rows by change, by account, or not (in turn).
    Group,
    Refresh,
    Go(Screen),
    Vnc,
    Screenshot,
    SerialLog,
    /// The events screen follows the newest event, or stays on the chosen row.
    Follow,
    /// The daemon's own recent log (operators).
    DaemonLog,
    Quit,
    Drain,
    Resume,
    Offline,
    Cancel,
    Release,
    Extend,
}

/// Where a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Everywhere,
    On(&'static [Screen]),
}

impl Scope {
    pub fn contains(self, screen: Screen) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::On(s) => s.contains(&screen),
        }
    }
}

/// A key as the table writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Ctrl(char),
    Code(KeyCode),
}

impl Key {
    pub fn label(self) -> String {
        match self {
            Key::Char(' ') => "Space".into(),
            Key::Char(c) => c.to_string(),
            Key::Ctrl(c) => format!("Ctrl-{c}"),
            Key::Code(KeyCode::Up) => "↑".into(),
            Key::Code(KeyCode::Down) => "↓".into(),
            Key::Code(KeyCode::PageUp) => "PgUp".into(),
            Key::Code(KeyCode::PageDown) => "PgDn".into(),
            Key::Code(KeyCode::Home) => "Home".into(),
            Key::Code(KeyCode::End) => "End".into(),
            Key::Code(KeyCode::Enter) => "Enter".into(),
            Key::Code(KeyCode::Esc) => "Esc".into(),
            Key::Code(other) => format!("{other:?}"),
        }
    }

    fn matches(self, ev: &KeyEvent) -> bool {
        match (self, ev.code) {
            // Terminals disagree on whether Shift comes with an upper-case letter: the char
            // alone decides.
            (Key::Char(c), KeyCode::Char(e)) => {
                c == e
                    && !ev
                        .modifiers
                        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
            }
            (Key::Ctrl(c), KeyCode::Char(e)) => {
                c == e && ev.modifiers.contains(KeyModifiers::CONTROL)
            }
            (Key::Code(c), e) => c == e,
            _ => false,
        }
    }
}

/// One row of the keymap.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    pub keys: &'static [Key],
    pub action: KeyAction,
    /// The name in the `:` command bar, if it has one.
    pub command: Option<&'static str>,
    pub help: &'static str,
    pub scope: Scope,
    /// Changes the fleet: confirmed in a dialog, absent in read-only mode.
    pub changes: bool,
    /// Other names the command bar takes for it, as k9s has (`:h` for `:hosts`).
    pub aliases: &'static [&'static str],
    /// Only an operator token may use it (absent in read-only mode), though it changes nothing.
    pub operator: bool,
}

impl Binding {
    const fn aliases(self, aliases: &'static [&'static str]) -> Binding {
        Binding { aliases, ..self }
    }

    const fn operator(self) -> Binding {
        Binding {
            operator: true,
            ..self
        }
    }

    /// True if the command bar knows it by `name`: its command or one of its aliases.
    pub fn named(&self, name: &str) -> bool {
        self.command == Some(name) || self.aliases.contains(&name)
    }
}

const HOSTS: &[Screen] = &[Screen::Hosts];
const QUEUE: &[Screen] = &[Screen::Queue];
const EVENTS: &[Screen] = &[Screen::Events];
const VM_SCREENS: &[Screen] = &[Screen::Vms, Screen::Breakpoints];
const BREAKPOINTS: &[Screen] = &[Screen::Breakpoints, Screen::Vms];
const TABLES: &[Screen] = &[
    Screen::Hosts,
    Screen::Queue,
    Screen::Vms,
    Screen::Breakpoints,
    Screen::Events,
];

const fn b(
    keys: &'static [Key],
    action: KeyAction,
    command: Option<&'static str>,
    help: &'static str,
    scope: Scope,
) -> Binding {
    Binding {
        keys,
        action,
        command,
        help,
        scope,
        changes: false,
        aliases: &[],
        operator: false,
    }
}

const fn change(
    key: &'static [Key],
    action: KeyAction,
    command: &'static str,
    help: &'static str,
    scope: &'static [Screen],
) -> Binding {
    Binding {
        keys: key,
        action,
        command: Some(command),
        help,
        scope: Scope::On(scope),
        changes: true,
        aliases: &[],
        operator: false,
    }
}

use KeyAction as A;
use Scope::Everywhere as ALL;

/// The keymap.
pub const KEYMAP: &[Binding] = &[
    b(
        &[Key::Char('?')],
        A::Help,
        Some("help"),
        "show this help",
        ALL,
    ),
    b(
        &[Key::Char(':')],
        A::CommandBar,
        None,
        "command bar (screens, actions)",
        ALL,
    ),
    b(
        &[Key::Char('/')],
        A::Filter,
        Some("filter"),
        "filter the rows",
        Scope::On(TABLES),
    ),
    b(
        &[Key::Char('k'), Key::Code(KeyCode::Up)],
        A::Up,
        None,
        "up",
        ALL,
    ),
    b(
        &[Key::Char('j'), Key::Code(KeyCode::Down)],
        A::Down,
        None,
        "down",
        ALL,
    ),
    b(
        &[Key::Char('g'), Key::Code(KeyCode::Home)],
        A::Top,
        None,
        "first row",
        ALL,
    ),
    b(
        &[Key::Char('G'), Key::Code(KeyCode::End)],
        A::Bottom,
        None,
        "last row",
        ALL,
    ),
    b(
        &[Key::Code(KeyCode::PageUp), Key::Ctrl('b')],
        A::PageUp,
        None,
        "page up",
        ALL,
    ),
    b(
        &[Key::Code(KeyCode::PageDown), Key::Ctrl('f')],
        A::PageDown,
        None,
        "page down",
        ALL,
    ),
    b(
        &[Key::Code(KeyCode::Enter)],
        A::Enter,
        None,
        "open the details",
        Scope::On(TABLES),
    ),
    b(
        &[Key::Code(KeyCode::Esc)],
        A::Back,
        None,
        "back, close, clear the filter",
        ALL,
    ),
    b(
        &[Key::Char(' ')],
        A::Mark,
        None,
        "mark or unmark the row for a bulk action, and move down",
        Scope::On(TABLES),
    ),
    b(
        &[Key::Char('>')],
        A::SortNext,
        Some("sort"),
        "sort by the next column",
        Scope::On(TABLES),
    ),
    b(
        &[Key::Char('<')],
        A::SortPrev,
        None,
        "sort by the previous column",
        Scope::On(TABLES),
    ),
    b(
        &[Key::Char('i')],
        A::SortReverse,
        Some("reverse"),
        "reverse the sort",
        Scope::On(TABLES),
    ),
    b(
        &[Key::Char('c')],
        A::Group,
        Some("group"),
        "group the queue by change, then by account, then not",
        Scope::On(QUEUE),
    ),
    b(
        &[Key::Ctrl('r')],
        A::Refresh,
        Some("refresh"),
        "fetch now",
        ALL,
    ),
    b(
        &[Key::Char('1')],
        A::Go(Screen::Overview),
        Some("overview"),
        "overview screen",
        ALL,
    )
    .aliases(&["o"]),
    b(
        &[Key::Char('2')],
        A::Go(Screen::Hosts),
        Some("hosts"),
        "hosts screen",
        ALL,
    )
    .aliases(&["h", "host"]),
    b(
        &[Key::Char('3')],
        A::Go(Screen::Queue),
        Some("queue"),
        "queue screen (why waiting)",
        ALL,
    )
    .aliases(&["q", "request", "requests", "req"]),
    b(
        &[Key::Char('4')],
        A::Go(Screen::Vms),
        Some("vms"),
        "VMs screen",
        ALL,
    )
    .aliases(&["v", "vm"]),
    b(
        &[Key::Char('5')],
        A::Go(Screen::Breakpoints),
        Some("breakpoints"),
        "breakpoints screen",
        ALL,
    )
    .aliases(&["b", "bp"]),
    b(
        &[Key::Char('6')],
        A::Go(Screen::Events),
        Some("events"),
        "events screen",
        ALL,
    )
    .aliases(&["ev", "event"]),
    b(
        &[Key::Char('v')],
        A::Vnc,
        Some("vnc"),
        "VNC: ssh -L hint and copy, or a local viewer",
        Scope::On(VM_SCREENS),
    ),
    b(
        &[Key::Char('s')],
        A::Screenshot,
        Some("screenshot"),
        "screenshot preview",
        Scope::On(VM_SCREENS),
    ),
    b(
        &[Key::Char('l')],
        A::SerialLog,
        Some("serial"),
        "serial log, followed as it grows (f: pause)",
        Scope::On(VM_SCREENS),
    ),
    b(
        &[Key::Char('f')],
        A::Follow,
        Some("follow"),
        "follow the newest event, or stay on the chosen row",
        Scope::On(EVENTS),
    ),
    b(
        &[],
        A::DaemonLog,
        Some("logs"),
        "the daemon's own recent log",
        ALL,
    )
    .aliases(&["log"])
    .operator(),
    b(
        &[Key::Char('q'), Key::Ctrl('c')],
        A::Quit,
        Some("quit"),
        "quit",
        ALL,
    )
    .aliases(&["q!"]),
    change(
        &[Key::Char('D')],
        A::Drain,
        "drain",
        "drain the marked hosts (forecast shown)",
        HOSTS,
    ),
    change(
        &[Key::Char('R')],
        A::Resume,
        "resume",
        "resume the marked hosts",
        HOSTS,
    ),
    change(
        &[Key::Char('O')],
        A::Offline,
        "offline",
        "take the host offline (type its name)",
        HOSTS,
    ),
    change(
        &[Key::Char('X')],
        A::Cancel,
        "cancel",
        "cancel the marked requests",
        QUEUE,
    ),
    change(
        &[Key::Char('B')],
        A::Release,
        "release",
        "release the marked breakpoints",
        BREAKPOINTS,
    ),
    change(
        &[Key::Char('E')],
        A::Extend,
        "extend",
        "extend the marked breakpoints",
        BREAKPOINTS,
    ),
];

/// The bindings that exist in this mode.
pub fn bindings(read_only: bool) -> impl Iterator<Item = &'static Binding> {
    KEYMAP
        .iter()
        .filter(move |b| !(read_only && (b.changes || b.operator)))
}

/// The action a key has on a screen, if any.
pub fn lookup(ev: &KeyEvent, screen: Screen, read_only: bool) -> Option<KeyAction> {
    bindings(read_only)
        .find(|b| b.scope.contains(screen) && b.keys.iter().any(|k| k.matches(ev)))
        .map(|b| b.action)
}

/// Command-bar names starting with `prefix`, in table order (aliases are not offered).
pub fn complete(prefix: &str, read_only: bool) -> Vec<&'static str> {
    bindings(read_only)
        .filter_map(|b| b.command)
        .filter(|c| c.starts_with(prefix))
        .collect()
}

/// The action of a command-bar entry: an exact name, else the only name it is a prefix of.
pub fn command(text: &str, read_only: bool) -> Option<KeyAction> {
    command_binding(text, read_only).map(|b| b.action)
}

/// The binding a `:` command names (in full, by an alias, or by a prefix only it has).
pub fn command_binding(text: &str, read_only: bool) -> Option<&'static Binding> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let by_name = |name: &str| bindings(read_only).find(|b| b.named(name));
    if let Some(b) = by_name(text) {
        return Some(b);
    }
    match complete(text, read_only).as_slice() {
        [only] => by_name(only),
        _ => None,
    }
}

/// Help lines: keys, what they do, and where.
pub fn help_lines(read_only: bool) -> Vec<(String, &'static str, String)> {
    bindings(read_only)
        .map(|b| {
            let mut keys = b
                .keys
                .iter()
                .map(|k| k.label())
                .collect::<Vec<_>>()
                .join(" ");
            // A binding without a key is reached from the command bar.
            if keys.is_empty()
                && let Some(c) = b.command
            {
                keys = format!(":{c}");
            }
            let scope = match b.scope {
                Scope::Everywhere => String::new(),
                Scope::On(s) if s == TABLES => "tables".to_owned(),
                Scope::On(s) => s.iter().map(|s| s.title()).collect::<Vec<_>>().join(","),
            };
            (keys, b.help, scope)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn shift_letters_match_with_or_without_the_shift_flag() {
        let shifted = KeyEvent::new(KeyCode::Char('D'), KeyModifiers::SHIFT);
        assert_eq!(lookup(&shifted, Screen::Hosts, false), Some(A::Drain));
        assert_eq!(lookup(&key('D'), Screen::Hosts, false), Some(A::Drain));
        assert_eq!(lookup(&key('D'), Screen::Hosts, true), None);
        assert_eq!(lookup(&key('D'), Screen::Queue, false), None);
    }

    #[test]
    fn every_command_name_is_unique_and_completes() {
        let names: Vec<_> = KEYMAP
            .iter()
            .flat_map(|b| b.command.into_iter().chain(b.aliases.iter().copied()))
            .collect();
        for n in &names {
            assert_eq!(names.iter().filter(|m| *m == n).count(), 1, "{n}");
            assert!(command(n, false).is_some(), "{n}");
        }
        assert_eq!(command("hos", false), Some(A::Go(Screen::Hosts)));
        assert_eq!(command("re", false), None, "ambiguous");
        assert_eq!(command("drain", true), None);
        assert_eq!(command("h", false), Some(A::Go(Screen::Hosts)));
        assert_eq!(command("q", false), Some(A::Go(Screen::Queue)));
        assert_eq!(command("q!", false), Some(A::Quit));
        assert_eq!(command("ev", false), Some(A::Go(Screen::Events)));
        assert_eq!(command("logs", false), Some(A::DaemonLog));
        assert_eq!(command("logs", true), None, "operators only");
    }
}
