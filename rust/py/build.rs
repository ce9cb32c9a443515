//! Link-time placement of the request path: the functions listed in
//! `hot_symbols.txt` (written by `scripts/hot_symbols.py`) are laid out
//! next to each other in the extension, so that a request, which runs each
//! of them once with cold caches, touches a few pages of code rather than
//! dozens. Only with LLD (the linker Rust uses by default on x86-64 Linux
//! from 1.90), which understands `--symbol-ordering-file`; elsewhere, or
//! with `PULSETRACE_NO_SYMBOL_ORDER` set, the extension links as usual.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=hot_symbols.txt");
    println!("cargo:rerun-if-env-changed=PULSETRACE_NO_SYMBOL_ORDER");
    if env::var_os("PULSETRACE_NO_SYMBOL_ORDER").is_some() || !links_with_lld() {
        return;
    }
    let Ok(list) = fs::read_to_string("hot_symbols.txt") else {
        return;
    };
    // The linker reads one symbol per line: comments and blank lines go.
    let symbols: String = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("hot.order");
    if fs::write(&out, symbols).is_err() {
        return;
    }
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--symbol-ordering-file={}",
        out.display()
    );
    // A symbol of the list that this build does not have (another
    // toolchain's hash) is skipped without a warning per symbol.
    println!("cargo:rustc-cdylib-link-arg=-Wl,--no-warn-symbol-ordering");
}

/// Whether the extension is linked by LLD: the x86-64 Linux target with
/// rustc 1.90 or later and no linker of the user's own.
fn links_with_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    let configured = ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"]
        .iter()
        .filter_map(|v| env::var(v).ok())
        .any(|f| f.contains("linker") || f.contains("fuse-ld"));
    if configured || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}
