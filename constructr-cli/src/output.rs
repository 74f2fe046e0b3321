//! Standard output that a closed pipe (`constructr nodes | head -1`) does not turn into a
//! panic: once a write fails, the rest of the output is dropped and the command goes on.

use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout refused a write (`EPIPE` after the reader left, a full disk, ...).
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout; after a failed write, does nothing.
pub fn line(args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_err()
    {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` through [`line`].
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
