//! Process and machine figures from /proc (Linux): CPU time, resident memory, the CPU model.
use std::path::Path;

/// Clock ticks per second in /proc/<pid>/stat: USER_HZ, fixed at 100 by the Linux ABI.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of a process, all its threads, or None once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based).
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// (VmRSS, VmHWM) in bytes.
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// One part of a process's resident memory (from /proc/PID/smaps).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemPart {
    /// "anonymous (heap, stacks, allocator caches)", a library's file name, "the binary",
    /// "other files".
    pub part: String,
    /// MB (10^6 bytes), as the harness's other memory figures.
    pub rss_mb: f64,
}

/// What a process's resident memory is made of, largest first: anonymous memory, then each
/// mapped file of 1 MB or more by name (libraries), the rest of the files together.
pub fn smaps_breakdown(pid: u32) -> Option<Vec<MemPart>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut parts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        // A mapping's header: "start-end perms offset dev inode [path]".
        if first.contains('-') && !first.ends_with(':') {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            current = if path.is_empty() || path.starts_with('[') {
                "anonymous (heap, stacks, allocator caches)".to_string()
            } else if exe.as_deref().is_some_and(|e| e == std::path::Path::new(path)) {
                "the binary".to_string()
            } else {
                path.rsplit('/').next().unwrap_or(path).to_string()
            };
        } else if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            *parts.entry(current.clone()).or_default() += kb;
        }
    }
    let mut out: Vec<MemPart> = Vec::new();
    let mut other = 0u64;
    for (part, kb) in parts {
        let named = part.starts_with("anonymous") || part == "the binary" || kb >= 1024;
        if named {
            out.push(MemPart {
                part,
                rss_mb: kb as f64 * 1024.0 / 1e6,
            });
        } else {
            other += kb;
        }
    }
    out.sort_by(|a, b| b.rss_mb.total_cmp(&a.rss_mb));
    out.push(MemPart {
        part: "other files".into(),
        rss_mb: other as f64 * 1024.0 / 1e6,
    });
    Some(out)
}

/// A short description of this machine: CPU model, logical CPUs, memory, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cpus} logical CPUs, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// The git commit of a checkout, when git can tell.
pub fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let cpu = cpu_seconds(pid).unwrap();
        assert!(cpu > 0.0, "{cpu}");
        let (rss, hwm) = rss_bytes(pid).unwrap();
        assert!(rss > 1 << 20 && hwm >= rss, "{rss} {hwm}");
        assert!(cpu_seconds(u32::MAX).is_none());
        // The breakdown adds up to the resident memory (within what moved between the reads).
        let parts = smaps_breakdown(pid).unwrap();
        let total: f64 = parts.iter().map(|p| p.rss_mb).sum();
        let rss_mb = rss_bytes(pid).unwrap().0 as f64 / 1e6;
        assert!(
            (total - rss_mb).abs() < 0.1 * rss_mb + 2.0,
            "{total} vs {rss_mb}: {parts:?}"
        );
        assert!(
            parts
                .iter()
                .any(|p| p.part.starts_with("anonymous") && p.rss_mb > 0.0),
            "{parts:?}"
        );
        assert!(
            parts.iter().any(|p| p.part == "the binary" && p.rss_mb > 0.0),
            "{parts:?}"
        );
        assert!(smaps_breakdown(u32::MAX).is_none());
    }
}
