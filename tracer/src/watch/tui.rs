//! The live terminal view: per VM, its drop points with rates and totals, updated
//! every interval. Keys: q quit, s change sort, / filter, Esc clear the filter.

use std::{
    io::{stdout, Stdout},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result};
use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Row, Table},
    Frame, Terminal,
};
use tokio::sync::mpsc;

use super::report::{Snapshot, VmReport};

/// Set while the terminal is in raw mode, so a panic can restore it.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Put the terminal back as it was (also called from the panic hook).
pub fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(
            stdout(),
            LeaveAlternateScreen,
            ratatui::crossterm::cursor::Show
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Rate,
    Total,
    Vm,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Sort::Rate => Sort::Total,
            Sort::Total => Sort::Vm,
            Sort::Vm => Sort::Rate,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Sort::Rate => "rate",
            Sort::Total => "total",
            Sort::Vm => "VM",
        }
    }
}

pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    sort: Sort,
    filter: String,
    editing: bool,
    last: Option<Snapshot>,
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Redraw,
    Quit,
    None,
}

impl Tui {
    pub fn start() -> Result<Self> {
        enable_raw_mode().context("switching the terminal to raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        execute!(stdout(), EnterAlternateScreen).context("opening the live view")?;
        let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
        Ok(Self {
            terminal,
            sort: Sort::Rate,
            filter: String::new(),
            editing: false,
            last: None,
        })
    }

    /// Keys arrive from a thread blocked on the terminal.
    pub fn keys() -> mpsc::UnboundedReceiver<KeyEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            while let Ok(ev) = event::read() {
                if let Event::Key(k) = ev {
                    if k.kind == KeyEventKind::Press && tx.send(k).is_err() {
                        break;
                    }
                }
            }
        });
        rx
    }

    pub fn show(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.last = Some(snapshot.clone());
        self.redraw()
    }

    pub fn redraw(&mut self) -> Result<()> {
        let Some(snap) = self.last.clone() else {
            return Ok(());
        };
        let (sort, filter, editing) = (self.sort, self.filter.clone(), self.editing);
        self.terminal
            .draw(|f| draw(f, &snap, sort, &filter, editing))?;
        Ok(())
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        let ctrl_c = k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
        if ctrl_c {
            return Action::Quit;
        }
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => return Action::None,
            }
            return Action::Redraw;
        }
        match k.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Action::Redraw
            }
            KeyCode::Char('/') => {
                self.editing = true;
                Action::Redraw
            }
            KeyCode::Esc => {
                self.filter.clear();
                Action::Redraw
            }
            _ => Action::None,
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The VMs to show, filtered and in the chosen order.
pub fn arrange<'a>(vms: &'a [VmReport], sort: Sort, filter: &str) -> Vec<&'a VmReport> {
    let needle = filter.to_lowercase();
    let mut out: Vec<&VmReport> = vms
        .iter()
        .filter(|v| needle.is_empty() || haystack(v).contains(&needle))
        .collect();
    match sort {
        Sort::Rate => out.sort_by(|a, b| {
            b.drops_per_s
                .total_cmp(&a.drops_per_s)
                .then(b.drops_total.cmp(&a.drops_total))
                .then(a.port.cmp(&b.port))
        }),
        Sort::Total => {
            out.sort_by(|a, b| b.drops_total.cmp(&a.drops_total).then(a.port.cmp(&b.port)))
        }
        Sort::Vm => out.sort_by(|a, b| a.port.cmp(&b.port)),
    }
    out
}

/// Everything a filter matches against: names, addresses, stages, reasons.
fn haystack(v: &VmReport) -> String {
    let mut s = format!(
        "{} {} {} {} {}",
        v.port,
        v.bridge,
        v.vm_ips.join(" "),
        v.vmid.as_deref().unwrap_or_default(),
        v.vm_name.as_deref().unwrap_or_default()
    );
    for d in &v.drops {
        s.push(' ');
        s.push_str(d.stage);
        s.push(' ');
        s.push_str(d.reason.as_deref().unwrap_or(""));
    }
    s.to_lowercase()
}

fn draw(f: &mut Frame, snap: &Snapshot, sort: Sort, filter: &str, editing: bool) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let st = &snap.self_stats;
    let title = format!(
        "pathtrace watch · {} VM port(s) · {} program · events lost {} · map {}/{} · other drops {}",
        st.vm_ports,
        st.programs_attached,
        st.events_lost + st.map_full,
        st.map_entries,
        st.map_capacity,
        st.unattributed_drops
    );
    f.render_widget(
        Line::from(title).style(Style::new().add_modifier(Modifier::BOLD)),
        head,
    );
    let header = Row::new([
        "VM", "stage", "reason", "where", "dev", "dir", "proto", "/s", "total",
    ])
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = arrange(&snap.vms, sort, filter)
        .into_iter()
        .flat_map(vm_rows)
        .collect::<Vec<_>>();
    let widths = [
        Constraint::Length(26),
        Constraint::Length(11),
        Constraint::Length(18),
        Constraint::Min(14),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    f.render_widget(Table::new(rows, widths).header(header), body);
    let cursor = if editing { "▏" } else { "" };
    let foot_text = format!(
        "q quit · s sort: {} · / filter: {filter}{cursor} · Esc clear",
        sort.word()
    );
    f.render_widget(Line::from(foot_text), foot);
}

fn vm_rows(v: &VmReport) -> Vec<Row<'static>> {
    // The port, then what names the guest behind it: its addresses, its VM name.
    let label = [v.port.clone(), v.vm_ips.join(",")]
        .into_iter()
        .chain(v.vm_name.clone())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if v.drops.is_empty() {
        return vec![Row::new([
            Cell::from(label),
            Cell::from("-"),
            Cell::from("no drops"),
        ])];
    }
    v.drops
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Row::new([
                if i == 0 { label.clone() } else { String::new() },
                d.stage.to_string(),
                d.reason.clone().unwrap_or_else(|| "-".into()),
                d.location.clone().unwrap_or_else(|| "-".into()),
                d.ifname.clone().unwrap_or_else(|| "-".into()),
                d.direction
                    .map(|x| x.replace("_vm", ""))
                    .unwrap_or_else(|| "-".into()),
                d.proto.to_string(),
                format!("{:.1}", d.per_s),
                d.total.to_string(),
            ])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(port: &str, total: u64, per_s: f64) -> VmReport {
        VmReport {
            port: port.into(),
            ifindex: 1,
            bridge: "vmbr0".into(),
            vm_ips: vec![format!("192.0.2.{}", port.len())],
            macs: vec![],
            vmid: None,
            vm_name: None,
            vlan: None,
            drops_total: total,
            drops_per_s: per_s,
            drops: vec![],
        }
    }

    #[test]
    fn sorts_and_filters() {
        let vms = [
            vm("tap101i0", 50, 0.0),
            vm("tap100i0", 5, 2.0),
            vm("vnet3", 0, 0.0),
        ];
        let order = |s, f| {
            arrange(&vms, s, f)
                .iter()
                .map(|v| v.port.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(Sort::Rate, ""), ["tap100i0", "tap101i0", "vnet3"]);
        assert_eq!(order(Sort::Total, ""), ["tap101i0", "tap100i0", "vnet3"]);
        assert_eq!(order(Sort::Vm, ""), ["tap100i0", "tap101i0", "vnet3"]);
        assert_eq!(order(Sort::Vm, "VNET"), ["vnet3"]);
        assert_eq!(order(Sort::Vm, "192.0.2.8"), ["tap100i0", "tap101i0"]);
    }
}
