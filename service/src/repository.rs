//! The model repository on disk, for loading versions at run time: every version folder of a
//! model (`<models_dir>/<id>/<version>/`), whether a folder is complete, and loading one so
//! that it can be swapped in while the serving version keeps serving.
//!
//! A folder is complete when its `SHA256SUMS` (the format `sha256sum` writes) lists every file
//! in it, `manifest.toml` among them, and every digest matches. Whoever ships a version writes
//! that file last (`sha256sum * > SHA256SUMS` once every other file is in place), so a folder
//! still being copied is never loaded: it has no list yet, or a file that does not match it.
//! Only regular files are read (no links out of the folder), and what the manifest names
//! must be listed.
use std::path::Path;
use std::sync::Arc;

use augur_actors::executor::BackendFactory;
use augur_actors::types::ModelInfo;
use augur_runtime::backend as inference;
use augur_runtime::{DeviceSpec, Manifest};
use sha2::{Digest, Sha256};

/// The checksum list, written last.
pub const SUMS: &str = "SHA256SUMS";

/// The longest version name taken.
const MAX_VERSION_CHARS: usize = 64;
/// The largest checksum list read (a few lines in practice).
const MAX_SUMS_BYTES: u64 = 64 * 1024;
/// Problems listed per folder, at most.
const MAX_PROBLEMS: usize = 16;
/// Longest a load may take (checks, self-test, warm-up) before it is reported as failed.
pub const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The version folders of model `id` that hold a manifest, oldest first (numeric order when
/// both names are numbers).
pub fn versions(models_dir: &Path, id: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(models_dir.join(id)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("manifest.toml").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    out.sort_by_key(|n| version_order(n));
    out
}

/// Which versions of a member stay loaded (`service.version_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest complete versions.
    Latest(usize),
    /// These versions (those of them that are in the repository and complete).
    Specific(Vec<String>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// `"latest N"` (N in 1..=16) or `"specific V1 V2 ..."` (names, spaces or commas between).
    pub fn parse(text: &str) -> Result<VersionPolicy, String> {
        let mut words = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty());
        let bad = || {
            format!("{text:?} is not a version policy: \"latest N\" (N in 1..=16) or \"specific V1 V2 ...\"")
        };
        match words.next() {
            Some("latest") => {
                let n = words
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(bad)?;
                if words.next().is_some() || !(1..=16).contains(&n) {
                    return Err(bad());
                }
                Ok(VersionPolicy::Latest(n))
            }
            Some("specific") => {
                let mut vs: Vec<String> = Vec::new();
                for v in words {
                    check_version_name(v)?;
                    if !vs.iter().any(|x| x == v) {
                        vs.push(v.to_string());
                    }
                }
                if vs.is_empty() || vs.len() > 16 {
                    return Err(bad());
                }
                vs.sort_by_key(|n| version_order(n));
                Ok(VersionPolicy::Specific(vs))
            }
            _ => Err(bad()),
        }
    }

    /// Versions it keeps loaded, at most.
    pub fn count(&self) -> usize {
        match self {
            VersionPolicy::Latest(n) => *n,
            VersionPolicy::Specific(v) => v.len(),
        }
    }

    /// Whether it names version `v` explicitly (`specific`).
    pub fn names(&self, v: &str) -> bool {
        matches!(self, VersionPolicy::Specific(vs) if vs.iter().any(|x| x == v))
    }

    /// Of `available` (oldest first, see [`versions`]), the ones it keeps loaded, oldest first:
    /// the last of them serves when nothing is pinned.
    pub fn wanted(&self, available: &[String]) -> Vec<String> {
        match self {
            VersionPolicy::Latest(n) => available[available.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::Specific(vs) => available.iter().filter(|v| vs.contains(v)).cloned().collect(),
        }
    }
}

/// Numeric order when a name is a number (numbers after other names, as [`versions`] lists).
fn version_order(n: &str) -> (Option<u64>, String) {
    (n.parse::<u64>().ok(), n.to_string())
}

/// Whether version `a` comes after `b` in the repository's order.
pub fn newer(a: &str, b: &str) -> bool {
    version_order(a) > version_order(b)
}

/// What tells whether a version folder changed since it was looked at: how many entries it
/// has, their total size and the latest modification time among them (a stat of each, no
/// reading). A copy that lands its checksum list before its other files (`rsync` copies in
/// name order, `cp -r` in directory order) changes it again when the rest arrives. `None`:
/// it has no list yet, or an empty one (`sha256sum * > SHA256SUMS` creates it empty, then
/// writes it once every file is hashed), so it is not complete.
pub fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let m = std::fs::symlink_metadata(dir.join(SUMS)).ok()?;
    if m.len() == 0 {
        return None;
    }
    let mut f = Fingerprint {
        entries: 0,
        bytes: 0,
        latest: std::time::SystemTime::UNIX_EPOCH,
    };
    for e in std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .take(MAX_FOLDER_ENTRIES)
    {
        let Ok(m) = e.metadata() else { continue };
        f.entries += 1;
        f.bytes = f.bytes.wrapping_add(m.len());
        if let Ok(t) = m.modified() {
            f.latest = f.latest.max(t);
        }
    }
    Some(f)
}

/// Entries of a version folder looked at by [`fingerprint`], at most.
const MAX_FOLDER_ENTRIES: usize = 4096;

/// See [`fingerprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    entries: usize,
    bytes: u64,
    latest: std::time::SystemTime,
}

/// A version name from a request: a folder name, nothing that walks the tree.
pub fn check_version_name(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_VERSION_CHARS
        && v != "."
        && v != ".."
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {:?} is not a version name (1 to {MAX_VERSION_CHARS} of A-Z a-z 0-9 . _ -)",
            crate::oip::clip_message(v.to_string())
        ))
    }
}

/// A regular file (not a link, a pipe or a device) of at most `max` bytes, or why not.
fn regular(path: &Path, max: Option<u64>) -> Result<std::fs::File, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file (links, pipes and devices are not loaded)".into());
    }
    if let Some(max) = max.filter(|m| meta.len() > *m) {
        return Err(format!("{} bytes, more than {max}", meta.len()));
    }
    std::fs::File::open(path).map_err(|e| e.to_string())
}

/// The SHA-256 of a file, read in pieces.
fn digest(path: &Path) -> Result<String, String> {
    let mut f = regular(path, None)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| e.to_string())?;
    Ok(hex(&h.finalize()))
}

/// Whether a version folder is complete: every problem found, listed. Answers the names the
/// list covers.
pub fn check_complete(dir: &Path) -> Result<std::collections::BTreeSet<String>, String> {
    let sums = dir.join(SUMS);
    let read = regular(&sums, Some(MAX_SUMS_BYTES)).and_then(|mut f| {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut f, &mut t).map_err(|e| e.to_string())?;
        Ok(t)
    });
    let text = match read {
        Ok(t) => t,
        Err(_) if std::fs::symlink_metadata(&sums).is_err() => {
            return Err(format!(
                "{} is incomplete: it has no {SUMS} (written last, once every file is in place: \
                 `sha256sum * > {SUMS}`)",
                dir.display()
            ));
        }
        Err(e) => return Err(format!("{}: {e}", sums.display())),
    };
    let mut problems = Vec::new();
    let mut listed = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        // `<64 hex>  <name>` (text mode) or `<64 hex> *<name>` (binary mode).
        let parsed = line.split_once(' ').and_then(|(hex, rest)| {
            let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
            let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && plain)
                .then(|| (name.to_string(), hex.to_ascii_lowercase()))
        });
        match parsed {
            // `sha256sum * > SHA256SUMS` lists the list itself (empty when it was hashed).
            Some((name, _)) if name == SUMS => {}
            Some((name, hex)) => {
                if listed.insert(name.clone(), hex).is_some() {
                    problems.push(format!("{SUMS} lists {name} twice"));
                }
            }
            None => problems.push(format!("{SUMS} line {}: not `<sha256>  <file name>`", n + 1)),
        }
    }
    if !listed.contains_key("manifest.toml") {
        problems.push(format!("{SUMS} does not list manifest.toml"));
    }
    for (name, want) in &listed {
        match digest(&dir.join(name)) {
            Ok(got) => {
                if got != *want {
                    problems.push(format!(
                        "{name}: its SHA-256 is {got}, {SUMS} says {want} (a file still being \
                         copied, or changed since)"
                    ));
                }
            }
            Err(e) => problems.push(format!("{name}: listed in {SUMS} but not readable: {e}")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_string();
            if name != SUMS && e.path().is_file() && !listed.contains_key(&name) {
                problems.push(format!("{name}: in the folder but not in {SUMS}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(listed.into_keys().collect())
    } else {
        let more = problems.len().saturating_sub(MAX_PROBLEMS);
        problems.truncate(MAX_PROBLEMS);
        if more > 0 {
            problems.push(format!("{more} more"));
        }
        Err(format!("{}: {}", dir.display(), problems.join("; ")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a version must share with the one serving, for the streams' windows (and the stacker
/// and the protocol's shapes) to stay valid across a swap, and for its outputs to mean the
/// same (classes in the same order, the same features, the same label).
fn check_compatible(
    serving: &ModelInfo,
    new: &ModelInfo,
    old_m: Option<&Manifest>,
    new_m: &Manifest,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Some(old) = old_m {
        if old.classes != new_m.classes {
            problems.push(format!(
                "classes {:?} differ from the serving version's {:?}",
                new_m.classes, old.classes
            ));
        }
        if old.feature_set != new_m.feature_set {
            problems.push(format!(
                "feature set {:?} differs from the serving version's {:?}",
                new_m.feature_set, old.feature_set
            ));
        }
        if old.label.horizon_bars != new_m.label.horizon_bars
            || old.label.threshold_k != new_m.label.threshold_k
        {
            problems.push(format!(
                "label (horizon {} bars, k {}) differs from the serving version's ({} bars, k {})",
                new_m.label.horizon_bars,
                new_m.label.threshold_k,
                old.label.horizon_bars,
                old.label.threshold_k
            ));
        }
    }
    if new.id != serving.id {
        problems.push(format!("its manifest's id is {:?}, not {:?}", new.id, serving.id));
    }
    if new.window != serving.window {
        problems.push(format!(
            "window {} differs from the serving version's {}",
            new.window, serving.window
        ));
    }
    if new.features != serving.features {
        problems.push(format!(
            "{} features differ from the serving version's {}",
            new.features, serving.features
        ));
    }
    if new.timeframes != serving.timeframes {
        problems.push(format!(
            "timeframes {:?} differ from the serving version's {:?}",
            new.timeframes, serving.timeframes
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Checks and loads version `version` of the model served as `serving` (complete folder, its
/// manifest, the model, its golden self-test, the same window, features and timeframes), on
/// a blocking thread: what the executor of that version needs.
pub async fn prepare(
    service: crate::config::ServiceConfig,
    serving: ModelInfo,
    version: String,
) -> Result<(Arc<str>, BackendFactory), String> {
    check_version_name(&version)?;
    let models_dir = service.models_dir;
    let (device, intra_op_threads) = (service.device, service.intra_op_threads);
    let feature_sets_dir = service.feature_sets_dir;
    let id = serving.id.to_string();
    let dir = models_dir.join(&id).join(&version);
    let work = move || {
        if !dir.join("manifest.toml").is_file() {
            return Err(format!(
                "{id} has no version {version:?}: no {}",
                dir.join("manifest.toml").display()
            ));
        }
        let listed = check_complete(&dir)?;
        let m = Manifest::load(&dir).map_err(|e| e.to_string())?;
        // What the manifest points at must be in the folder and covered by the list.
        let mut named = vec![m.file.clone()];
        named.extend(m.torchscript_file.clone());
        if let Some(g) = &m.golden {
            named.extend([g.inputs.clone(), g.outputs.clone()]);
        }
        for n in named {
            if !listed.contains(&n) {
                return Err(format!(
                    "{}: the manifest names {n:?}, which {SUMS} does not list (files outside the folder are not loaded)",
                    dir.display()
                ));
            }
        }
        if m.version != version {
            return Err(format!(
                "{}: the manifest says version {:?}, the folder {version:?}",
                dir.display(),
                m.version
            ));
        }
        let device =
            DeviceSpec::parse(&device).ok_or_else(|| format!("service.device {device:?} is not a device"))?;
        let old_m = Manifest::load(&models_dir.join(&id).join(&*serving.version)).ok();
        let names = crate::codec::Validator::feature_names(&feature_sets_dir);
        let (info, inner) = inference::model_spec(dir.clone(), device, intra_op_threads, &names)?;
        check_compatible(&serving, &info, old_m.as_ref(), &m)
            .map_err(|e| format!("{id} version {version}: {e}"))?;
        // A restart after a crash loads the folder again: checked again, so a folder changed
        // since (being overwritten, deleted) is refused rather than half loaded.
        let factory: BackendFactory = Arc::new(move || {
            check_complete(&dir)?;
            inner()
        });
        Ok((info.version, factory))
    };
    match tokio::time::timeout(LOAD_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(done) => done.map_err(|e| format!("loading stopped: {e}"))?,
        Err(_) => Err(format!(
            "the checks and the self-test took more than {} s (a file that cannot be read?)",
            LOAD_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, b) in files {
            std::fs::write(d.path().join(n), b).unwrap();
        }
        d
    }

    fn sums(files: &[(&str, &[u8])]) -> String {
        files
            .iter()
            .map(|(n, b)| format!("{}  {n}\n", hex(&Sha256::digest(b))))
            .collect()
    }

    #[test]
    fn a_folder_is_complete_only_when_its_list_matches_every_file() {
        let files: &[(&str, &[u8])] = &[("manifest.toml", b"id = 1"), ("model.pt", b"weights")];
        let d = folder(files);
        let err = check_complete(d.path()).unwrap_err();
        assert!(err.contains("no SHA256SUMS"), "{err}");
        std::fs::write(d.path().join(SUMS), sums(files)).unwrap();
        check_complete(d.path()).unwrap();
        // A file still being copied (shorter than listed), and one not listed at all.
        std::fs::write(d.path().join("model.pt"), b"weig").unwrap();
        std::fs::write(d.path().join("extra.bin"), b"x").unwrap();
        let err = check_complete(d.path()).unwrap_err();
        assert!(err.contains("model.pt: its SHA-256 is"), "{err}");
        assert!(
            err.contains("extra.bin: in the folder but not in SHA256SUMS"),
            "{err}"
        );
    }

    #[test]
    fn links_out_of_the_folder_are_not_read_and_the_list_may_list_itself() {
        let outside = folder(&[("secret", b"outside")]);
        let files: &[(&str, &[u8])] = &[("manifest.toml", b"id = 1"), ("model.pt", b"outside")];
        let d = folder(&files[..1]);
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("model.pt")).unwrap();
        // `sha256sum * > SHA256SUMS`: the list names itself, hashed while empty.
        let mut list = sums(files);
        list.push_str(&format!("{}  {SUMS}\n", hex(&Sha256::digest(b""))));
        std::fs::write(d.path().join(SUMS), list).unwrap();
        let err = check_complete(d.path()).unwrap_err();
        assert!(
            err.contains("model.pt") && err.contains("not a regular file"),
            "{err}"
        );
        std::fs::remove_file(d.path().join("model.pt")).unwrap();
        std::fs::write(d.path().join("model.pt"), b"outside").unwrap();
        let listed = check_complete(d.path()).unwrap();
        assert_eq!(
            listed.into_iter().collect::<Vec<_>>(),
            ["manifest.toml", "model.pt"]
        );
    }

    #[test]
    fn bad_lists_and_names_are_refused_with_their_line() {
        let files: &[(&str, &[u8])] = &[("model.pt", b"w")];
        let d = folder(files);
        std::fs::write(
            d.path().join(SUMS),
            format!("{}nonsense\n{}  ../x\n", sums(files), "a".repeat(64)),
        )
        .unwrap();
        let err = check_complete(d.path()).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("does not list manifest.toml"), "{err}");
        for bad in ["", "..", "../1", "a/b", &"9".repeat(65)] {
            assert!(check_version_name(bad).is_err(), "{bad}");
        }
        check_version_name("2").unwrap();
        check_version_name("2026-11-25.a").unwrap();
    }

    #[test]
    fn version_policies_are_read_and_pick_their_versions() {
        let have: Vec<String> = ["x", "1", "2", "10"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            VersionPolicy::parse("latest 2").unwrap().wanted(&have),
            ["2", "10"]
        );
        assert_eq!(VersionPolicy::parse(" latest  9 ").unwrap().wanted(&have), have);
        let p = VersionPolicy::parse("specific 10, 1 7").unwrap();
        assert_eq!(
            p,
            VersionPolicy::Specific(vec!["1".into(), "7".into(), "10".into()])
        );
        assert_eq!(p.wanted(&have), ["1", "10"]);
        assert!(p.names("7") && !p.names("2"));
        assert_eq!(p.count(), 3);
        assert_eq!(VersionPolicy::default().wanted(&have), ["10"]);
        for bad in [
            "",
            "latest",
            "latest 0",
            "latest 17",
            "latest 2 3",
            "newest 1",
            "specific",
            "specific ../1",
        ] {
            assert!(VersionPolicy::parse(bad).is_err(), "{bad:?}");
        }
        assert!(newer("10", "9") && newer("1", "x") && !newer("2", "2"));
    }

    #[test]
    fn versions_are_listed_in_numeric_order() {
        let d = tempfile::tempdir().unwrap();
        for v in ["10", "2", "1", "x"] {
            std::fs::create_dir_all(d.path().join("m").join(v)).unwrap();
            std::fs::write(d.path().join("m").join(v).join("manifest.toml"), "").unwrap();
        }
        std::fs::create_dir_all(d.path().join("m").join("3")).unwrap();
        assert_eq!(versions(d.path(), "m"), ["x", "1", "2", "10"]);
    }
}
