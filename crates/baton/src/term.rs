//! Terminal output shared by the CLI and the demo: colour (only on a
//! terminal, never with NO_COLOR) and stdout writes that end quietly when the
//! reader has gone.

use std::io::IsTerminal;

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Write to stdout; once the reader has gone, write nothing more.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
pub enum Color {
    Red,
    Green,
    Bold,
}

pub fn color_enabled_stderr() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Colour only for a terminal, never when NO_COLOR is set.
pub fn paint(text: &str, color: Color) -> String {
    if std::env::var_os("NO_COLOR").is_some() || !std::io::stdout().is_terminal() {
        return text.to_string();
    }
    let code = match color {
        Color::Red => "31",
        Color::Green => "32",
        Color::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}
