//! Benchmark of the terminal on a Cortex-M4: builds the QEMU image (`terminal-firmware/m4`) in
//! release, runs it under `qemu-system-arm -icount shift=0`, reads its `BENCH key=value` lines,
//! measures the firmware's flash and RAM with `arm-none-eabi-size -A`, prints a table and writes a
//! flat JSON object of numbers to the file named by `BENCH_OUT`.
//!
//! Metrics: `tap_instructions_{transit,employment,rehab,welfare}` (the terminal's own work for one
//! valid tap, the card's computation paused, Issuer key looked up cold, a 64-entry status list),
//! the same as `tap_instructions_*_38m` against a national-scale list (38 M entries, 2 % revoked,
//! made by the image's build.rs and kept in its flash), `tap_ms_est_*` (instructions x 1.4 cycles /
//! 64 MHz), `status_*_38m` (installing that list, one lookup in it, its size),
//! `mount_instructions_38m` (a mount with it in force), `firmware_flash_bytes` (text + rodata +
//! vectors + data of the `size-probe` ELF: the terminal alone, no status list),
//! `firmware_ram_bytes` (its .data + .bss, plus the `Terminal` value, plus the deepest measured
//! stack of a mount, a tap, an update or a log export).
//!
//! Run: `cargo run --release -p terminal-core --features std --example bench_m4`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

const CYCLES_PER_INSTRUCTION: f64 = 1.4;
const CLOCK_HZ: f64 = 64e6;
const QEMU_TIMEOUT: Duration = Duration::from_secs(300);

fn m4_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../m4")
}

/// Builds the image workspace in release; returns (name, path) of each executable.
fn build() -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(m4_dir())
        // The image keeps its own target directory (see its .cargo/config.toml).
        .env_remove("CARGO_TARGET_DIR")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("building the image failed: {}", out.status));
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Minimal scan of cargo's JSON messages: `"executable":"<path>"` and the target name.
        let Some(exe) = field(line, "\"executable\":\"") else {
            continue;
        };
        let Some(name) = field(line, "\"name\":\"") else {
            continue;
        };
        bins.push((name, PathBuf::from(exe)));
    }
    Ok(bins)
}

fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

fn run_qemu(elf: &Path) -> Result<String> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-arm")
        .args([
            "-machine",
            "mps2-an386",
            "-cpu",
            "cortex-m4",
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
            "-icount",
            "shift=0",
            "-kernel",
        ])
        .arg(elf)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-arm: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let text = reader.join().unwrap_or_default();
            print!("{text}");
            if !status.success() {
                return Err(format!("the image reported failures ({status})"));
            }
            return Ok(text);
        }
        if started.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            return Err("QEMU run timed out".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `size -A`: section name -> size. A failed run, or an ELF without code, is an error: a size of
/// 0 must never reach the results as if it were a measurement.
fn sections(elf: &Path) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("arm-none-eabi-size")
        .arg("-A")
        .arg(elf)
        .output()
        .map_err(|e| format!("cannot start arm-none-eabi-size: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "arm-none-eabi-size -A {} failed ({}): {}",
            elf.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let map = parse_sections(&String::from_utf8_lossy(&out.stdout));
    if map.get(".text").copied().unwrap_or(0) == 0 {
        return Err(format!(
            "arm-none-eabi-size -A {} shows no .text",
            elf.display()
        ));
    }
    Ok(map)
}

/// The `name size` rows of `size -A` output.
fn parse_sections(text: &str) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(name), Some(size)) = (it.next(), it.next()) {
            if let Ok(size) = size.parse::<u64>() {
                map.insert(name.to_owned(), size);
            }
        }
    }
    map
}

fn flash_of(s: &BTreeMap<String, u64>) -> u64 {
    [".vector_table", ".text", ".rodata", ".data"]
        .iter()
        .map(|k| s.get(*k).copied().unwrap_or(0))
        .sum()
}

fn static_ram_of(s: &BTreeMap<String, u64>) -> u64 {
    // .emu (emulated flash and cards, memory.x) is not the terminal's RAM.
    [".data", ".bss", ".uninit"]
        .iter()
        .map(|k| s.get(*k).copied().unwrap_or(0))
        .sum()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_m4: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let bins = build()?;
    let elf = |name: &str| {
        bins.iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .ok_or(format!("the build produced no {name}"))
    };
    let image = elf("terminal-m4")?;
    let probe = elf("size-probe")?;
    let text = run_qemu(&image)?;
    let mut bench: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.strip_prefix("BENCH ").and_then(|l| l.split_once('=')) {
            if let Ok(v) = v.trim().parse::<f64>() {
                bench.insert(k.trim().to_owned(), v);
            }
        }
    }
    let get = |k: &str| {
        bench
            .get(k)
            .copied()
            .ok_or(format!("the image printed no {k}"))
    };
    if get("decision_failures")? != 0.0 {
        return Err("wrong decisions".into());
    }
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let ms = |n: f64| (n * CYCLES_PER_INSTRUCTION / CLOCK_HZ * 1000.0 * 100.0).round() / 100.0;
    for s in ["transit", "employment", "rehab", "welfare"] {
        for list in ["", "_38m"] {
            let n = get(&format!("tap_instructions_{s}{list}"))?;
            out.insert(format!("tap_instructions_{s}{list}"), n);
            out.insert(format!("tap_ms_est_{s}{list}"), ms(n));
        }
    }
    for k in [
        "status_list_38m_entries",
        "status_list_38m_revoked",
        "status_list_38m_wire_bytes",
        "status_install_38m_instructions",
        "status_parse_38m_instructions",
        "status_lookup_38m_instructions_mean",
        "status_lookup_38m_instructions_max",
        "mount_instructions_38m",
    ] {
        out.insert(k.into(), get(k)?);
    }
    out.insert(
        "status_install_38m_ms_est".into(),
        ms(get("status_install_38m_instructions")?),
    );
    let probe_sections = sections(&probe)?;
    let image_sections = sections(&image)?;
    let stack = get("mount_stack_peak_bytes")?
        .max(get("tap_stack_peak_bytes")?)
        .max(get("update_stack_peak_bytes")?)
        .max(get("export_stack_peak_bytes")?);
    let static_ram = static_ram_of(&probe_sections) as f64;
    let struct_bytes = get("terminal_struct_bytes")?;
    out.insert(
        "firmware_flash_bytes".into(),
        flash_of(&probe_sections) as f64,
    );
    out.insert(
        "firmware_ram_bytes".into(),
        static_ram + struct_bytes + stack,
    );
    out.insert("firmware_ram_static_bytes".into(), static_ram);
    out.insert("firmware_stack_peak_bytes".into(), stack);
    for k in [
        "mount_stack_peak_bytes",
        "tap_stack_peak_bytes",
        "update_stack_peak_bytes",
        "export_stack_peak_bytes",
    ] {
        out.insert(k.into(), get(k)?);
    }
    out.insert("terminal_struct_bytes".into(), struct_bytes);
    // The status list lies in its own section (memory.x): data, not the image's program.
    out.insert(
        "m4_image_flash_bytes".into(),
        flash_of(&image_sections) as f64,
    );
    let list_section = image_sections.get(".statuslist").copied().unwrap_or(0);
    if list_section as f64 != get("status_list_38m_wire_bytes")? {
        return Err(format!(
            "the image's .statuslist section has {list_section} bytes, not the list's"
        ));
    }
    for k in [
        "p256_asm_verify_instructions",
        "p256_asm_sign_instructions",
        "p256_asm_decompress_instructions",
        "p256_portable_verify_instructions",
    ] {
        out.insert(k.into(), get(k)?);
    }

    println!();
    println!("{:<36} {:>14}", "metric", "value");
    for (k, v) in &out {
        println!("{k:<36} {v:>14}");
    }
    let json = out
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(path) = std::env::var_os("BENCH_OUT") {
        std::fs::write(&path, format!("{{{json}}}\n"))
            .map_err(|e| format!("writing {}: {e}", PathBuf::from(path).display()))?;
    }
    Ok(())
}
