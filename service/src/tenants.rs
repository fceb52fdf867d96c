//! Who may use the Open Inference Protocol: API keys, each of a tenant with a tier, a model
//! list, a request rate and a concurrency limit. The same checks on HTTP and gRPC.
//!
//! The keys file (`[access].keys_file`, TOML) holds SHA-256 hashes of the keys, never the
//! keys (`augur key` makes a key and its line). It is read at start-up (every problem listed;
//! the service does not start with a bad file) and again whenever it changes (checked every
//! `[access].reload_ms`); a bad edit is logged and counted, and the keys before it stay.
//!
//! ```toml
//! revoked = ["sha256:…"]           # refused as revoked (a key that is simply gone is unknown)
//! [[tenant]]
//! name = "desk-a"                  # the `tenant` label of the metrics
//! tier = "pro"                     # free | pro | enterprise
//! models = ["augur-ensemble"]      # optional: narrows what the tier allows
//! rate_per_s = 50.0                # token bucket: refill per second ...
//! burst = 100                      # ... and its size (default: rate_per_s, at least 1)
//! max_concurrency = 4              # calls in progress at once
//! keys = ["sha256:…"]
//! ```
//!
//! The tiers (the source design's subscription tiers):
//!
//! | tier | models | outputs |
//! | --- | --- | --- |
//! | free | `augur-ensemble` | `direction` |
//! | pro | `augur-ensemble` and the members | all but the explanations |
//! | enterprise | every model, the stacker too | all, the explanations too |
//!
//! The operator's bearer token (`[http].token`) passes every check and limit. Without a keys
//! file, the token alone guards infer (when set), as before.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use augur_actors::telemetry::{AUTH_REFUSED, KEYS_RELOADS, TENANT_CALLS};
/// The outputs that explain a call (TreeSHAP): the operator's and enterprise tenants'.
pub const EXPLANATION_OUTPUTS: [&str; 2] = ["contributions", "contribution_features"];
/// Tenants in one file at most (the `tenant` label stays bounded).
pub const MAX_TENANTS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

/// What a model is, for the tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Ensemble,
    Member,
    Stacker,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTenant {
    name: String,
    tier: Tier,
    #[serde(default)]
    models: Option<Vec<String>>,
    rate_per_s: f64,
    #[serde(default)]
    burst: Option<f64>,
    max_concurrency: u32,
    keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    revoked: Vec<String>,
    #[serde(default)]
    tenant: Vec<FileTenant>,
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    pub tier: Tier,
    models: Option<Vec<String>>,
    rate_per_s: f64,
    burst: f64,
    max_concurrency: u32,
    /// The bucket and the calls in progress: kept by name across reloads of the file, so an
    /// edit neither refills the buckets nor forgets the calls in progress.
    limits: Arc<Limits>,
}

#[derive(Debug)]
struct Limits {
    bucket: Mutex<Bucket>,
    in_flight: AtomicU32,
}

/// Why a call was refused, and how the protocol says it.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No key (HTTP 401, gRPC UNAUTHENTICATED).
    Missing,
    Unknown,
    Revoked,
    /// The tier or the tenant's list does not allow the model (403, PERMISSION_DENIED).
    Model(String),
    /// The tier does not allow an output asked for by name (403, PERMISSION_DENIED).
    Output(String),
    /// Over the request rate (429, RESOURCE_EXHAUSTED).
    RateLimited(String),
    /// Over the concurrency limit (429, RESOURCE_EXHAUSTED).
    Busy(String),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::Missing => {
                "a bearer token is required (Authorization: Bearer <API key or operator token>)".into()
            }
            Refusal::Unknown => "unknown API key".into(),
            Refusal::Revoked => "this API key is revoked".into(),
            Refusal::Model(m) | Refusal::Output(m) | Refusal::RateLimited(m) | Refusal::Busy(m) => m.clone(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Missing | Refusal::Unknown | Refusal::Revoked => 401,
            Refusal::Model(_) | Refusal::Output(_) => 403,
            Refusal::RateLimited(_) | Refusal::Busy(_) => 429,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No keys file and no token: anyone, everything.
    Open,
    /// The operator's token: everything, no limits.
    Operator,
    Tenant(Arc<Tenant>),
}

/// A call in progress for a tenant: the concurrency slot is given back on drop.
#[derive(Debug)]
pub struct Permit(Option<Arc<Tenant>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.limits.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn count(tenant: &str, outcome: &'static str) {
    metrics::counter!(TENANT_CALLS, "tenant" => tenant.to_string(), "outcome" => outcome).increment(1);
}

impl Caller {
    /// May this caller call `model` with `rows` rows? Takes a concurrency slot and `rows` rate
    /// tokens (a row is a prediction) for a tenant.
    pub fn admit(&self, model: &str, kind: ModelKind, rows: usize) -> Result<Permit, Refusal> {
        let Caller::Tenant(t) = self else {
            return Ok(Permit(None));
        };
        let tier_allows = match t.tier {
            Tier::Free => kind == ModelKind::Ensemble,
            Tier::Pro => kind != ModelKind::Stacker,
            Tier::Enterprise => true,
        };
        let listed = t.models.as_ref().is_none_or(|m| m.iter().any(|x| x == model));
        if !tier_allows || !listed {
            count(&t.name, "model_refused");
            return Err(Refusal::Model(format!(
                "tenant {} ({} tier) may not call {model}",
                t.name,
                t.tier.as_str()
            )));
        }
        // The slot first: a call refused as busy spends no rate token.
        let before = t.limits.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(Some(t.clone()));
        if before >= t.max_concurrency {
            count(&t.name, "busy");
            return Err(Refusal::Busy(format!(
                "tenant {} has {} calls in progress, its limit",
                t.name, t.max_concurrency
            )));
        }
        let rows = rows.max(1) as f64;
        if rows > t.burst {
            count(&t.name, "rate_limited");
            return Err(Refusal::RateLimited(format!(
                "tenant {}: {rows} rows in one call, its burst is {}: send fewer rows per call",
                t.name, t.burst
            )));
        }
        if let Ok(mut b) = t.limits.bucket.lock() {
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * t.rate_per_s).min(t.burst);
            b.last = now;
            if b.tokens < rows {
                count(&t.name, "rate_limited");
                return Err(Refusal::RateLimited(format!(
                    "tenant {} is over its rate of {} rows/s",
                    t.name, t.rate_per_s
                )));
            }
            b.tokens -= rows;
        }
        count(&t.name, "ok");
        Ok(permit)
    }

    /// Whether this caller may see output `name`: a free tenant sees the direction; a tenant
    /// whose model list leaves out a member sees the ensemble's probabilities and direction
    /// (the rest are the members'); below enterprise, no explanations
    /// ([`EXPLANATION_OUTPUTS`]).
    pub fn sees(&self, name: &str, members: &[&str]) -> bool {
        let Caller::Tenant(t) = self else {
            return true;
        };
        let narrowed = t
            .models
            .as_ref()
            .is_some_and(|m| members.iter().any(|x| !m.iter().any(|y| y == x)));
        match t.tier {
            Tier::Free => name == "direction",
            _ if narrowed => matches!(name, "probabilities" | "direction"),
            Tier::Pro => !EXPLANATION_OUTPUTS.contains(&name),
            Tier::Enterprise => true,
        }
    }

    /// What [`Caller::sees`] allows, in words.
    fn what_it_sees(&self, members: &[&str]) -> &'static str {
        if !self.sees("probabilities", members) {
            "only \"direction\""
        } else if !self.sees("forecasts", members) {
            "only \"probabilities\" and \"direction\""
        } else {
            "every output but the explanations (enterprise)"
        }
    }

    /// Only the operator and enterprise tenants choose the ensemble rule (`method`): stacking
    /// runs the stacker, which the lower tiers may not call.
    pub fn check_method(&self, method: Option<&str>) -> Result<(), Refusal> {
        match (self, method) {
            (Caller::Tenant(t), Some(m)) if t.tier != Tier::Enterprise => {
                count(&t.name, "model_refused");
                Err(Refusal::Model(format!(
                    "tenant {} ({} tier) may not choose the ensemble method ({m:?}): the service's applies",
                    t.name,
                    t.tier.as_str()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Refuses outputs asked for by name that the tier does not allow.
    pub fn check_outputs(&self, wanted: Option<&[String]>, members: &[&str]) -> Result<(), Refusal> {
        let (Some(wanted), Caller::Tenant(t)) = (wanted, self) else {
            return Ok(());
        };
        let refused: Vec<&String> = wanted.iter().filter(|w| !self.sees(w, members)).collect();
        if refused.is_empty() {
            return Ok(());
        }
        count(&t.name, "output_refused");
        Err(Refusal::Output(format!(
            "tenant {} ({} tier) may not see outputs {refused:?}: it sees {}",
            t.name,
            t.tier.as_str(),
            self.what_it_sees(members)
        )))
    }
}

/// The keys as last loaded.
#[derive(Debug, Default)]
struct Loaded {
    by_hash: HashMap<[u8; 32], Arc<Tenant>>,
    revoked: HashSet<[u8; 32]>,
}

/// The keys file, reloaded when it changes.
#[derive(Debug)]
pub struct Access {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// Modification time and length of the file last read.
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

/// The SHA-256 of a key, as the file writes it.
pub fn hash_line(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads and checks a keys file: every problem, not only the first. A tenant of `previous`
/// keeps its bucket and its calls in progress.
fn read(path: &Path, previous: Option<&Loaded>) -> Result<Loaded, Vec<String>> {
    let mut kept: HashMap<&str, Arc<Limits>> = HashMap::new();
    for t in previous.into_iter().flat_map(|p| p.by_hash.values()) {
        kept.insert(t.name.as_str(), t.limits.clone());
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("keys file {}: {e}", path.display())])?;
    let file: KeysFile =
        toml::from_str(&text).map_err(|e| vec![format!("keys file {}: {e}", path.display())])?;
    let mut errs = Vec::new();
    let mut loaded = Loaded::default();
    for r in &file.revoked {
        match parse_hash(r) {
            Some(h) => {
                loaded.revoked.insert(h);
            }
            None => errs.push(format!("revoked: {r:?} is not sha256:<64 hex digits>")),
        }
    }
    if file.tenant.len() > MAX_TENANTS {
        errs.push(format!("{} tenants, at most {MAX_TENANTS}", file.tenant.len()));
    }
    let mut names = HashSet::new();
    for t in file.tenant {
        let at = format!("tenant {:?}", t.name);
        let label_ok = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !label_ok {
            errs.push(format!("{at}: a name is 1-64 of A-Z a-z 0-9 - _ ."));
        }
        if !names.insert(t.name.clone()) {
            errs.push(format!("{at}: named twice"));
        }
        if !(t.rate_per_s.is_finite() && t.rate_per_s > 0.0) {
            errs.push(format!("{at}: rate_per_s must be above 0"));
        }
        let burst = t.burst.unwrap_or(t.rate_per_s).max(1.0);
        if !burst.is_finite() {
            errs.push(format!("{at}: burst must be finite"));
        }
        if t.max_concurrency == 0 {
            errs.push(format!("{at}: max_concurrency must be at least 1"));
        }
        if t.keys.is_empty() {
            errs.push(format!("{at}: no keys"));
        }
        let tenant = Arc::new(Tenant {
            name: t.name.clone(),
            tier: t.tier,
            models: t.models,
            rate_per_s: t.rate_per_s,
            burst,
            max_concurrency: t.max_concurrency,
            limits: kept.get(t.name.as_str()).cloned().unwrap_or_else(|| {
                Arc::new(Limits {
                    bucket: Mutex::new(Bucket {
                        tokens: burst,
                        last: Instant::now(),
                    }),
                    in_flight: AtomicU32::new(0),
                })
            }),
        });
        for k in &t.keys {
            match parse_hash(k) {
                None => errs.push(format!(
                    "{at}: key {k:?} is not sha256:<64 hex digits> (`augur key` makes one)"
                )),
                Some(h) => {
                    if loaded.by_hash.insert(h, tenant.clone()).is_some() {
                        errs.push(format!("{at}: key {k:?} is listed twice"));
                    }
                }
            }
        }
    }
    if errs.is_empty() { Ok(loaded) } else { Err(errs) }
}

impl Access {
    /// Reads the file at start-up: every problem, or the keys.
    pub fn load(path: &Path) -> Result<Access, Vec<String>> {
        let stamp = stamp_of(path);
        let loaded = read(path, None)?;
        Ok(Access {
            path: path.to_path_buf(),
            loaded: RwLock::new(loaded),
            stamp: Mutex::new(stamp),
        })
    }

    /// Reads the file again if it changed. A bad file keeps the keys before it (logged,
    /// counted); answers whether new keys were taken.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp_of(&self.path);
        let Ok(mut last) = self.stamp.lock() else {
            return false;
        };
        if now == *last {
            return false;
        }
        *last = now;
        let read = match self.loaded.read() {
            Ok(before) => read(&self.path, Some(&before)).and_then(|l| {
                // A file caught in the middle of a rewrite (truncated, then written) reads as no
                // tenants at all: not taken; the next change is read again.
                if l.by_hash.is_empty() && !before.by_hash.is_empty() {
                    Err(vec![
                        "no tenants in it (caught mid-write?): write the file by renaming a complete one"
                            .into(),
                    ])
                } else {
                    Ok(l)
                }
            }),
            Err(_) => Err(vec!["the keys lock is poisoned".into()]),
        };
        match read {
            Ok(l) => {
                let tenants = l
                    .by_hash
                    .values()
                    .map(|t| t.name.as_str())
                    .collect::<HashSet<_>>()
                    .len();
                if let Ok(mut g) = self.loaded.write() {
                    *g = l;
                }
                metrics::counter!(KEYS_RELOADS, "result" => "ok").increment(1);
                tracing::info!(file = %self.path.display(), tenants, "keys reloaded");
                true
            }
            Err(errs) => {
                metrics::counter!(KEYS_RELOADS, "result" => "error").increment(1);
                tracing::error!(file = %self.path.display(), problems = ?errs, "keys file refused: the keys before it stay");
                false
            }
        }
    }

    /// The tenant of `key`.
    pub fn tenant(&self, key: &str) -> Result<Arc<Tenant>, Refusal> {
        let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let g = self.loaded.read().map_err(|_| Refusal::Unknown)?;
        if g.revoked.contains(&h) {
            return Err(Refusal::Revoked);
        }
        g.by_hash.get(&h).cloned().ok_or(Refusal::Unknown)
    }
}

/// The credentials of an `Authorization` value: `Bearer <value>`, the scheme in any case
/// (RFC 7235), spaces around the value ignored.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, value) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| value.trim())
        .filter(|v| !v.is_empty())
}

/// Who is calling, from the bearer value given (if any): the operator's token, a tenant's
/// key, or anyone when neither keys nor a token are configured.
pub fn caller(access: Option<&Access>, token: Option<&str>, given: Option<&str>) -> Result<Caller, Refusal> {
    if let (Some(t), Some(g)) = (token, given)
        && crate::http::constant_time_eq(g.as_bytes(), t.as_bytes())
    {
        return Ok(Caller::Operator);
    }
    let refused = |r: Refusal| {
        let reason = match r {
            Refusal::Missing => "missing",
            Refusal::Revoked => "revoked",
            _ => "unknown",
        };
        metrics::counter!(AUTH_REFUSED, "reason" => reason).increment(1);
        r
    };
    match (access, given) {
        (Some(a), Some(g)) => a.tenant(g).map(Caller::Tenant).map_err(refused),
        (Some(_), None) => Err(refused(Refusal::Missing)),
        (None, _) if token.is_none() => Ok(Caller::Open),
        (None, Some(_)) => Err(refused(Refusal::Unknown)),
        (None, None) => Err(refused(Refusal::Missing)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn test_a_bad_keys_file_lists_every_problem() {
        let (_d, p) = file(
            "revoked = [\"nope\"]\n[[tenant]]\nname = \"a b\"\ntier = \"pro\"\nrate_per_s = 0\nmax_concurrency = 0\nkeys = [\"sha256:zz\"]\n[[tenant]]\nname = \"x\"\ntier = \"free\"\nrate_per_s = 1\nmax_concurrency = 1\nkeys = []\n",
        );
        let errs = Access::load(&p).unwrap_err();
        for want in [
            "revoked",
            "a name is",
            "rate_per_s",
            "max_concurrency",
            "not sha256",
            "no keys",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
        let (_d, p) = file("[[tenant]]\nname = \"a\"\ntier = \"gold\"\n");
        assert!(Access::load(&p).unwrap_err()[0].contains("gold"));
    }

    #[test]
    fn test_explanations_are_for_enterprise_tenants_and_the_operator() {
        let tenant = |name: &str, tier: &str, extra: &str| {
            format!(
                "[[tenant]]\nname = \"{name}\"\ntier = \"{tier}\"\n{extra}rate_per_s = 10\nmax_concurrency = 2\nkeys = [\"{}\"]\n",
                hash_line(&format!("k-{name}"))
            )
        };
        let text = [
            tenant("p", "pro", ""),
            tenant("e", "enterprise", ""),
            tenant("n", "enterprise", "models = [\"augur-ensemble\"]\n"),
        ]
        .concat();
        let (_d, p) = file(&text);
        let a = Access::load(&p).unwrap();
        let members = ["xgb-direction"];
        let wanted = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let pro = caller(Some(&a), None, Some("k-p")).unwrap();
        let ent = caller(Some(&a), None, Some("k-e")).unwrap();
        let narrowed = caller(Some(&a), None, Some("k-n")).unwrap();
        let refused = pro
            .check_outputs(Some(&wanted(&["forecasts", "contributions"])), &members)
            .unwrap_err();
        assert!(
            matches!(&refused, Refusal::Output(m) if m.contains("contributions") && !m.contains("\"forecasts\"")),
            "{refused:?}"
        );
        assert!(
            pro.check_outputs(Some(&wanted(&["forecasts", "patterns"])), &members)
                .is_ok()
        );
        assert!(!pro.sees("contribution_features", &members));
        assert!(
            ent.check_outputs(Some(&wanted(&EXPLANATION_OUTPUTS)), &members)
                .is_ok()
        );
        assert!(Caller::Operator.sees("contributions", &members));
        assert!(narrowed.sees("direction", &members) && !narrowed.sees("contributions", &members));
    }

    #[test]
    fn test_tiers_rates_and_concurrency() {
        let text = format!(
            "revoked = [\"{}\"]\n[[tenant]]\nname = \"f\"\ntier = \"free\"\nrate_per_s = 0.001\nburst = 3\nmax_concurrency = 1\nkeys = [\"{}\"]\n",
            hash_line("old"),
            hash_line("k-free")
        );
        let (_d, p) = file(&text);
        let a = Access::load(&p).unwrap();
        assert_eq!(caller(Some(&a), None, Some("old")).unwrap_err(), Refusal::Revoked);
        assert_eq!(
            caller(Some(&a), None, Some("k-nope")).unwrap_err(),
            Refusal::Unknown
        );
        assert_eq!(caller(Some(&a), None, None).unwrap_err(), Refusal::Missing);
        assert!(matches!(
            caller(Some(&a), Some("op"), Some("op")).unwrap(),
            Caller::Operator
        ));
        let c = caller(Some(&a), Some("op"), Some("k-free")).unwrap();
        assert!(matches!(
            c.admit("lstm-direction", ModelKind::Member, 1),
            Err(Refusal::Model(_))
        ));
        assert!(
            matches!(
                c.admit("augur-ensemble", ModelKind::Ensemble, 4),
                Err(Refusal::RateLimited(_))
            ),
            "rows over the burst"
        );
        let first = c.admit("augur-ensemble", ModelKind::Ensemble, 1).unwrap();
        assert!(matches!(
            c.admit("augur-ensemble", ModelKind::Ensemble, 1),
            Err(Refusal::Busy(_))
        ));
        drop(first);
        // A reload keeps the calls in progress (the held call still counts) and the bucket.
        let held = c.admit("augur-ensemble", ModelKind::Ensemble, 1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, text.replace("rate_per_s = 0.001", "rate_per_s = 0.0011")).unwrap();
        assert!(a.reload_if_changed());
        let c2 = caller(Some(&a), None, Some("k-free")).unwrap();
        assert!(matches!(
            c2.admit("augur-ensemble", ModelKind::Ensemble, 1),
            Err(Refusal::Busy(_))
        ));
        drop(held);
        let _third = c2.admit("augur-ensemble", ModelKind::Ensemble, 1).unwrap();
        // Burst 3 spent across the reload, the refill one per 1000 s.
        drop(_third);
        assert!(matches!(
            c2.admit("augur-ensemble", ModelKind::Ensemble, 1),
            Err(Refusal::RateLimited(_))
        ));
        assert!(
            c.check_outputs(Some(&["probabilities".to_string()]), &[])
                .is_err()
        );
        assert!(c.check_outputs(Some(&["direction".to_string()]), &[]).is_ok());
        assert!(c.check_outputs(None, &[]).is_ok());
        assert!(c.check_method(Some("stacking")).is_err());
        assert!(c.check_method(None).is_ok());
        // A file caught mid-write (empty) is not taken.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, "").unwrap();
        assert!(!a.reload_if_changed());
        assert!(caller(Some(&a), None, Some("k-free")).is_ok());
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(matches!(caller(None, None, None).unwrap(), Caller::Open));
        assert_eq!(caller(None, Some("op"), Some("x")).unwrap_err(), Refusal::Unknown);
    }
}
